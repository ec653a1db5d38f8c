//! The command schema: argument and return types in QAPI's terms, and the
//! `query-qmp-schema` introspection generated from them (QEMU's SchemaInfo,
//! `qapi/introspect.json`, produced like `scripts/qapi/introspect.py`).

use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// A QAPI type.
#[derive(Debug, Clone)]
pub enum Type {
    Str,
    /// `int` (int64).
    Int,
    Int8,
    Int16,
    Int32,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Size,
    Bool,
    Number,
    /// Any JSON value (`'any'`).
    Any,
    Null,
    Array(Box<Type>),
    Enum(Arc<EnumType>),
    Object(Arc<ObjectType>),
}

impl Type {
    pub fn array(elem: Type) -> Type {
        Type::Array(Box::new(elem))
    }

    /// A named enum, e.g. `Type::enumeration("RunState", &["running", "paused"])`.
    pub fn enumeration(name: &str, values: &[&str]) -> Type {
        Type::Enum(Arc::new(EnumType {
            name: name.to_string(),
            values: values.iter().map(|s| s.to_string()).collect(),
        }))
    }

    pub fn object(obj: ObjectType) -> Type {
        Type::Object(Arc::new(obj))
    }

    /// The builtin's schema name; every integer type introspects as `int`.
    fn builtin(&self) -> Option<(&'static str, &'static str)> {
        Some(match self {
            Type::Str => ("str", "string"),
            Type::Int
            | Type::Int8
            | Type::Int16
            | Type::Int32
            | Type::Uint8
            | Type::Uint16
            | Type::Uint32
            | Type::Uint64
            | Type::Size => ("int", "int"),
            Type::Bool => ("bool", "boolean"),
            Type::Number => ("number", "number"),
            Type::Any => ("any", "value"),
            Type::Null => ("null", "null"),
            _ => return None,
        })
    }
}

/// A named enumeration.
#[derive(Debug, Clone)]
pub struct EnumType {
    pub name: String,
    pub values: Vec<String>,
}

/// A member of an object (or a command's argument).
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub ty: Type,
    pub optional: bool,
    pub features: Vec<String>,
}

impl Member {
    pub fn new(name: &str, ty: Type, optional: bool) -> Self {
        Member {
            name: name.to_string(),
            ty,
            optional,
            features: Vec::new(),
        }
    }
}

/// A flat union's branches: `tag` names an enum member of the object.
#[derive(Debug, Clone)]
pub struct Variants {
    pub tag: String,
    pub cases: Vec<(String, Arc<ObjectType>)>,
}

/// A named struct (or flat union when `variants` is set).
#[derive(Debug, Clone)]
pub struct ObjectType {
    pub name: String,
    pub members: Vec<Member>,
    pub variants: Option<Variants>,
    pub features: Vec<String>,
}

impl ObjectType {
    pub fn new(name: &str) -> Self {
        ObjectType {
            name: name.to_string(),
            members: Vec::new(),
            variants: None,
            features: Vec::new(),
        }
    }

    /// A mandatory member.
    pub fn member(mut self, name: &str, ty: Type) -> Self {
        self.members.push(Member::new(name, ty, false));
        self
    }

    /// An optional member (`'*name'` in QAPI).
    pub fn optional(mut self, name: &str, ty: Type) -> Self {
        self.members.push(Member::new(name, ty, true));
        self
    }

    /// Adds a feature (e.g. `deprecated`, `unstable`) to the last member added.
    pub fn member_feature(mut self, feature: &str) -> Self {
        if let Some(m) = self.members.last_mut() {
            m.features.push(feature.to_string());
        }
        self
    }

    /// Makes this a flat union discriminated by member `tag`.
    pub fn tag(mut self, tag: &str) -> Self {
        self.variants = Some(Variants {
            tag: tag.to_string(),
            cases: Vec::new(),
        });
        self
    }

    /// The branch used when the tag has value `case`. Call `tag` first.
    pub fn variant(mut self, case: &str, branch: ObjectType) -> Self {
        if let Some(v) = self.variants.as_mut() {
            v.cases.push((case.to_string(), Arc::new(branch)));
        }
        self
    }

    pub fn feature(mut self, feature: &str) -> Self {
        self.features.push(feature.to_string());
        self
    }
}

/// A command's declaration. Build with `CommandDef::new(name).arg(..)...`.
#[derive(Debug, Clone)]
pub struct CommandDef {
    pub name: String,
    /// The argument type; an implicit `q_obj_NAME-arg` unless set with `arg_type`.
    pub args: Arc<ObjectType>,
    /// `None`: the command returns `{}`.
    pub returns: Option<Type>,
    /// Runs before `x-exit-preconfig` too (`'allow-preconfig': true`).
    pub allow_preconfig: bool,
    /// May be sent with `exec-oob`.
    pub allow_oob: bool,
    /// Arguments beyond the declared ones are passed through rather than rejected,
    /// for QEMU's `'gen': false` commands such as `device_add`.
    pub extra_args: bool,
    pub features: Vec<String>,
}

impl CommandDef {
    pub fn new(name: &str) -> Self {
        CommandDef {
            name: name.to_string(),
            args: Arc::new(ObjectType::new(&format!("q_obj_{name}-arg"))),
            returns: None,
            allow_preconfig: false,
            allow_oob: false,
            extra_args: false,
            features: Vec::new(),
        }
    }

    fn args_mut(&mut self) -> &mut ObjectType {
        Arc::make_mut(&mut self.args)
    }

    /// A mandatory argument.
    pub fn arg(mut self, name: &str, ty: Type) -> Self {
        self.args_mut().members.push(Member::new(name, ty, false));
        self
    }

    /// An optional argument.
    pub fn opt(mut self, name: &str, ty: Type) -> Self {
        self.args_mut().members.push(Member::new(name, ty, true));
        self
    }

    /// Uses a named (possibly union) type as the whole argument (`'boxed': true`).
    pub fn arg_type(mut self, ty: ObjectType) -> Self {
        self.args = Arc::new(ty);
        self
    }

    pub fn returns(mut self, ty: Type) -> Self {
        self.returns = Some(ty);
        self
    }

    pub fn allow_preconfig(mut self, yes: bool) -> Self {
        self.allow_preconfig = yes;
        self
    }

    pub fn allow_oob(mut self, yes: bool) -> Self {
        self.allow_oob = yes;
        self
    }

    pub fn extra_args(mut self, yes: bool) -> Self {
        self.extra_args = yes;
        self
    }

    pub fn feature(mut self, feature: &str) -> Self {
        self.features.push(feature.to_string());
        self
    }
}

/// An event's declaration (only used for `query-qmp-schema`; any name can be emitted).
#[derive(Debug, Clone)]
pub struct EventDef {
    pub name: String,
    pub data: Arc<ObjectType>,
    pub features: Vec<String>,
}

impl EventDef {
    pub fn new(name: &str) -> Self {
        EventDef {
            name: name.to_string(),
            data: Arc::new(ObjectType::new(&format!("q_obj_{name}-arg"))),
            features: Vec::new(),
        }
    }

    pub fn member(mut self, name: &str, ty: Type) -> Self {
        Arc::make_mut(&mut self.data)
            .members
            .push(Member::new(name, ty, false));
        self
    }

    pub fn optional(mut self, name: &str, ty: Type) -> Self {
        Arc::make_mut(&mut self.data)
            .members
            .push(Member::new(name, ty, true));
        self
    }

    pub fn feature(mut self, feature: &str) -> Self {
        self.features.push(feature.to_string());
        self
    }
}

/// A type queued for output, identified by its (unmasked) name.
enum Used {
    Builtin(&'static str, &'static str),
    Array(String, String),
    Enum(Arc<EnumType>),
    Object(Arc<ObjectType>),
}

/// Builds the SchemaInfo list. Like QEMU, commands and events come first and
/// then every type they use; names of enums and objects are masked as numbers
/// ("Clients should examine commands and events, not types").
struct Introspector {
    used: Vec<Used>,
    seen: HashMap<String, ()>,
    masked: HashMap<String, String>,
}

impl Introspector {
    fn mask(&mut self, name: &str) -> String {
        let n = self.masked.len();
        self.masked
            .entry(name.to_string())
            .or_insert_with(|| n.to_string())
            .clone()
    }

    fn mark(&mut self, key: String) -> bool {
        self.seen.insert(key, ()).is_none()
    }

    fn use_type(&mut self, ty: &Type) -> String {
        if let Some((name, json_type)) = ty.builtin() {
            if self.mark(format!("b:{name}")) {
                self.used.push(Used::Builtin(name, json_type));
            }
            return name.to_string();
        }
        match ty {
            Type::Array(elem) => {
                let e = self.use_type(elem);
                let name = format!("[{e}]");
                if self.mark(format!("a:{name}")) {
                    self.used.push(Used::Array(name.clone(), e));
                }
                name
            }
            Type::Enum(en) => {
                if self.mark(format!("t:{}", en.name)) {
                    self.used.push(Used::Enum(en.clone()));
                }
                self.mask(&en.name)
            }
            Type::Object(obj) => self.use_object(obj),
            _ => "any".to_string(),
        }
    }

    fn use_object(&mut self, obj: &Arc<ObjectType>) -> String {
        if self.mark(format!("t:{}", obj.name)) {
            self.used.push(Used::Object(obj.clone()));
        }
        self.mask(&obj.name)
    }

    fn members(&mut self, members: &[Member]) -> Vec<Value> {
        members
            .iter()
            .map(|m| {
                let mut o = Map::new();
                o.insert("name".into(), json!(m.name));
                o.insert("type".into(), json!(self.use_type(&m.ty)));
                if m.optional {
                    o.insert("default".into(), Value::Null);
                }
                if !m.features.is_empty() {
                    o.insert("features".into(), json!(m.features));
                }
                Value::Object(o)
            })
            .collect()
    }

    fn entity(&mut self, u: &Used) -> Value {
        match u {
            Used::Builtin(name, json_type) => {
                json!({"name": name, "meta-type": "builtin", "json-type": json_type})
            }
            Used::Array(name, elem) => {
                json!({"name": name, "meta-type": "array", "element-type": elem})
            }
            Used::Enum(en) => {
                let members: Vec<Value> = en.values.iter().map(|v| json!({"name": v})).collect();
                json!({"name": self.mask(&en.name), "meta-type": "enum",
                       "members": members, "values": en.values})
            }
            Used::Object(obj) => {
                let mut o = Map::new();
                o.insert("name".into(), json!(self.mask(&obj.name)));
                o.insert("meta-type".into(), json!("object"));
                let members = self.members(&obj.members);
                o.insert("members".into(), Value::Array(members));
                if let Some(v) = &obj.variants {
                    o.insert("tag".into(), json!(v.tag));
                    let cases: Vec<Value> = v
                        .cases
                        .iter()
                        .map(
                            |(case, branch)| json!({"case": case, "type": self.use_object(branch)}),
                        )
                        .collect();
                    o.insert("variants".into(), Value::Array(cases));
                }
                if !obj.features.is_empty() {
                    o.insert("features".into(), json!(obj.features));
                }
                Value::Object(o)
            }
        }
    }
}

/// The `query-qmp-schema` return value for these commands and events.
pub fn introspect<'a>(
    commands: impl IntoIterator<Item = &'a CommandDef>,
    events: impl IntoIterator<Item = &'a EventDef>,
) -> Value {
    let mut ix = Introspector {
        used: Vec::new(),
        seen: HashMap::new(),
        masked: HashMap::new(),
    };
    let empty = Arc::new(ObjectType::new("q_empty"));
    let mut out = Vec::new();
    for c in commands {
        let arg = if c.args.members.is_empty() && c.args.variants.is_none() {
            ix.use_object(&empty)
        } else {
            ix.use_object(&c.args)
        };
        let ret = match &c.returns {
            Some(t) => ix.use_type(t),
            None => ix.use_object(&empty),
        };
        let mut o = Map::new();
        o.insert("name".into(), json!(c.name));
        o.insert("meta-type".into(), json!("command"));
        o.insert("arg-type".into(), json!(arg));
        o.insert("ret-type".into(), json!(ret));
        if c.allow_oob {
            o.insert("allow-oob".into(), json!(true));
        }
        if !c.features.is_empty() {
            o.insert("features".into(), json!(c.features));
        }
        out.push(Value::Object(o));
    }
    for e in events {
        let arg = if e.data.members.is_empty() {
            ix.use_object(&empty)
        } else {
            ix.use_object(&e.data)
        };
        let mut o = Map::new();
        o.insert("name".into(), json!(e.name));
        o.insert("meta-type".into(), json!("event"));
        o.insert("arg-type".into(), json!(arg));
        if !e.features.is_empty() {
            o.insert("features".into(), json!(e.features));
        }
        out.push(Value::Object(o));
    }
    // Emitting a type can queue more (its members), so walk by index.
    let mut i = 0;
    while i < ix.used.len() {
        let u = std::mem::replace(&mut ix.used[i], Used::Builtin("", ""));
        let v = ix.entity(&u);
        ix.used[i] = u;
        out.push(v);
        i += 1;
    }
    Value::Array(out)
}

/// Looks an entity up by name in an introspection result (a test and VMM helper).
pub fn find_entity<'a>(schema: &'a Value, name: &str) -> Option<&'a Value> {
    schema
        .as_array()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_types_and_masking() {
        let ver = Type::object(
            ObjectType::new("VersionInfo")
                .member(
                    "qemu",
                    Type::object(
                        ObjectType::new("VersionTriple")
                            .member("major", Type::Int)
                            .member("minor", Type::Int)
                            .member("micro", Type::Int),
                    ),
                )
                .member("package", Type::Str),
        );
        let cmds = vec![
            CommandDef::new("query-version").returns(ver),
            CommandDef::new("qom-get")
                .arg("path", Type::Str)
                .opt("property", Type::Uint32)
                .returns(Type::Any),
            CommandDef::new("query-x").returns(Type::array(Type::Int8)),
        ];
        let s = introspect(&cmds, &[]);
        let qv = find_entity(&s, "query-version").unwrap();
        assert_eq!(qv["meta-type"], "command");
        let arg = qv["arg-type"].as_str().unwrap();
        let empty = find_entity(&s, arg).unwrap();
        assert_eq!(empty["members"], json!([]));
        let ret = find_entity(&s, qv["ret-type"].as_str().unwrap()).unwrap();
        assert_eq!(ret["meta-type"], "object");
        assert_eq!(ret["members"][1], json!({"name": "package", "type": "str"}));

        let qg = find_entity(&s, "qom-get").unwrap();
        let args = find_entity(&s, qg["arg-type"].as_str().unwrap()).unwrap();
        assert_eq!(
            args["members"],
            json!([{"name": "path", "type": "str"},
                   {"name": "property", "type": "int", "default": null}])
        );
        assert_eq!(qg["ret-type"], "any");
        assert_eq!(find_entity(&s, "any").unwrap()["json-type"], "value");
        let qx = find_entity(&s, "query-x").unwrap();
        assert_eq!(qx["ret-type"], "[int]");
        assert_eq!(find_entity(&s, "[int]").unwrap()["element-type"], "int");
        // Every name referenced resolves.
        for e in s.as_array().unwrap() {
            for key in ["arg-type", "ret-type", "element-type"] {
                if let Some(n) = e.get(key).and_then(Value::as_str) {
                    assert!(find_entity(&s, n).is_some(), "{n} missing");
                }
            }
        }
    }

    #[test]
    fn unions_and_enums() {
        let qom_type = Type::enumeration("ObjectType", &["memory-backend-ram", "iothread"]);
        let opts = ObjectType::new("ObjectOptions")
            .member("qom-type", qom_type)
            .member("id", Type::Str)
            .tag("qom-type")
            .variant(
                "memory-backend-ram",
                ObjectType::new("MemoryBackendProperties").member("size", Type::Size),
            );
        let cmds = vec![CommandDef::new("object-add").arg_type(opts)];
        let s = introspect(&cmds, &[EventDef::new("STOP")]);
        let c = find_entity(&s, "object-add").unwrap();
        let a = find_entity(&s, c["arg-type"].as_str().unwrap()).unwrap();
        assert_eq!(a["tag"], "qom-type");
        let branch = a["variants"][0]["type"].as_str().unwrap();
        assert_eq!(
            find_entity(&s, branch).unwrap()["members"][0]["name"],
            "size"
        );
        let en = find_entity(&s, a["members"][0]["type"].as_str().unwrap()).unwrap();
        assert_eq!(en["values"], json!(["memory-backend-ram", "iothread"]));
        assert_eq!(find_entity(&s, "STOP").unwrap()["meta-type"], "event");
    }
}
