//! Commands the protocol layer implements itself (`qapi/control.json`,
//! `qapi/introspect.json`, `monitor/qmp-cmds-control.c`).

use crate::error::QmpError;
use crate::registry::Registry;
use crate::schema::{CommandDef, ObjectType, Type};
use crate::session::Session;
use serde_json::{json, Map, Value};

fn str_list() -> Type {
    Type::array(Type::Str)
}

/// `VersionInfo`, also used by the greeting.
pub fn version_info_type() -> Type {
    Type::object(
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
    )
}

/// `SchemaInfo`, the flat union `query-qmp-schema` returns a list of.
fn schema_info_type() -> Type {
    let meta = Type::enumeration(
        "SchemaMetaType",
        &[
            "builtin",
            "enum",
            "array",
            "object",
            "alternate",
            "command",
            "event",
        ],
    );
    let json_type = Type::enumeration(
        "JSONType",
        &[
            "string", "number", "int", "boolean", "null", "object", "array", "value",
        ],
    );
    let enum_member = Type::object(
        ObjectType::new("SchemaInfoEnumMember")
            .member("name", Type::Str)
            .optional("features", str_list()),
    );
    let object_member = Type::object(
        ObjectType::new("SchemaInfoObjectMember")
            .member("name", Type::Str)
            .member("type", Type::Str)
            .optional("default", Type::Any)
            .optional("features", str_list()),
    );
    let variant = Type::object(
        ObjectType::new("SchemaInfoObjectVariant")
            .member("case", Type::Str)
            .member("type", Type::Str),
    );
    let alt_member =
        Type::object(ObjectType::new("SchemaInfoAlternateMember").member("type", Type::Str));
    Type::object(
        ObjectType::new("SchemaInfo")
            .member("name", Type::Str)
            .member("meta-type", meta)
            .optional("features", str_list())
            .tag("meta-type")
            .variant(
                "builtin",
                ObjectType::new("SchemaInfoBuiltin").member("json-type", json_type),
            )
            .variant(
                "enum",
                ObjectType::new("SchemaInfoEnum")
                    .member("members", Type::array(enum_member))
                    .member("values", str_list()),
            )
            .variant(
                "array",
                ObjectType::new("SchemaInfoArray").member("element-type", Type::Str),
            )
            .variant(
                "object",
                ObjectType::new("SchemaInfoObject")
                    .member("members", Type::array(object_member))
                    .optional("tag", Type::Str)
                    .optional("variants", Type::array(variant)),
            )
            .variant(
                "alternate",
                ObjectType::new("SchemaInfoAlternate").member("members", Type::array(alt_member)),
            )
            .variant(
                "command",
                ObjectType::new("SchemaInfoCommand")
                    .member("arg-type", Type::Str)
                    .member("ret-type", Type::Str)
                    .optional("allow-oob", Type::Bool),
            )
            .variant(
                "event",
                ObjectType::new("SchemaInfoEvent").member("arg-type", Type::Str),
            ),
    )
}

fn qmp_capabilities(args: Map<String, Value>, ctx: &mut Session) -> Result<Value, QmpError> {
    if ctx.negotiated() {
        return Err(QmpError::command_not_found_class(
            "Capabilities negotiation is already complete, command ignored",
        ));
    }
    let wanted: Vec<&str> = args
        .get("enable")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let unavailable: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| !(*c == "oob" && ctx.oob_offered()))
        .collect();
    if !unavailable.is_empty() {
        return Err(QmpError::generic(format!(
            "Capability {} not available",
            unavailable.join(", ")
        )));
    }
    ctx.complete_negotiation(wanted.contains(&"oob"));
    Ok(Value::Null)
}

fn query_version(_: Map<String, Value>, ctx: &mut Session) -> Result<Value, QmpError> {
    Ok(ctx.server().config().version_value())
}

fn query_commands(_: Map<String, Value>, ctx: &mut Session) -> Result<Value, QmpError> {
    let names: Vec<Value> = ctx
        .server()
        .registry()
        .commands()
        .map(|c| json!({"name": c.name}))
        .collect();
    Ok(Value::Array(names))
}

fn query_qmp_schema(_: Map<String, Value>, ctx: &mut Session) -> Result<Value, QmpError> {
    Ok(ctx.server().schema().clone())
}

type BuiltinFn = fn(Map<String, Value>, &mut Session) -> Result<Value, QmpError>;

pub(crate) fn register(r: &mut Registry) {
    let defs: Vec<(CommandDef, BuiltinFn)> = vec![
        (
            CommandDef::new("qmp_capabilities")
                .opt(
                    "enable",
                    Type::array(Type::enumeration("QMPCapability", &["oob"])),
                )
                .allow_preconfig(true),
            qmp_capabilities,
        ),
        (
            CommandDef::new("query-version")
                .returns(version_info_type())
                .allow_preconfig(true),
            query_version,
        ),
        (
            CommandDef::new("query-commands")
                .returns(Type::array(Type::object(
                    ObjectType::new("CommandInfo").member("name", Type::Str),
                )))
                .allow_preconfig(true),
            query_commands,
        ),
        (
            CommandDef::new("query-qmp-schema")
                .returns(Type::array(schema_info_type()))
                .allow_preconfig(true),
            query_qmp_schema,
        ),
    ];
    for (def, f) in defs {
        r.replace(def, f);
    }
}
