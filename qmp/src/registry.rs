//! The command registry: what the VMM declares (schema) and how it runs (handler).
//! `query-commands`, `query-qmp-schema` and argument checking all read it.

use crate::builtins;
use crate::error::{QmpError, RegistryError};
use crate::schema::{introspect, CommandDef, EventDef};
use crate::session::Session;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// A command's return value: a `Value`, or JSON text the handler serialised itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Value(Value),
    /// QEMU-format JSON text (`writer::to_json_text`), written as it is.
    Json(String),
}

/// Runs one command. `args` have been checked against the command's schema.
/// Return `Value::Null` (or `{}`) for commands without a return value.
pub trait Handler: Send + Sync {
    fn call(&self, args: Map<String, Value>, ctx: &mut Session) -> Result<Value, QmpError>;

    /// What the server calls: by default `call`'s value. `TextHandler` answers with text.
    fn answer(&self, args: Map<String, Value>, ctx: &mut Session) -> Result<Answer, QmpError> {
        self.call(args, ctx).map(Answer::Value)
    }
}

/// A handler that serialises its own answer to JSON text, for large answers: building a
/// `Value` tree (every key allocated, maps sorted) and then writing it costs several times
/// more than serialising a struct straight to text with `writer::to_json_text`.
///
/// ```
/// # use qmp::{Map, QmpError, Session, TextHandler, Value};
/// #[derive(serde::Serialize)]
/// struct Big { items: Vec<u32> }
/// let handler = TextHandler(|_args: Map<String, Value>, _ctx: &mut Session| {
///     qmp::writer::to_json_text(&Big { items: (0..1000).collect() })
///         .map_err(|e| QmpError::generic(e.to_string()))
/// });
/// # let _ = handler;
/// ```
pub struct TextHandler<F>(pub F);

impl<F> Handler for TextHandler<F>
where
    F: Fn(Map<String, Value>, &mut Session) -> Result<String, QmpError> + Send + Sync,
{
    fn call(&self, args: Map<String, Value>, ctx: &mut Session) -> Result<Value, QmpError> {
        let text = (self.0)(args, ctx)?;
        crate::parser::parse_one(&text).map_err(|e| QmpError::generic(e.0))
    }

    fn answer(&self, args: Map<String, Value>, ctx: &mut Session) -> Result<Answer, QmpError> {
        (self.0)(args, ctx).map(Answer::Json)
    }
}

impl<F> Handler for F
where
    F: Fn(Map<String, Value>, &mut Session) -> Result<Value, QmpError> + Send + Sync,
{
    fn call(&self, args: Map<String, Value>, ctx: &mut Session) -> Result<Value, QmpError> {
        self(args, ctx)
    }
}

pub(crate) struct Entry {
    pub(crate) def: CommandDef,
    pub(crate) handler: Arc<dyn Handler>,
}

/// Commands and events. `Registry::new()` already holds the built-in commands
/// (`qmp_capabilities`, `query-version`, `query-commands`, `query-qmp-schema`).
pub struct Registry {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    events: Vec<EventDef>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        let mut r = Registry {
            entries: Vec::new(),
            index: HashMap::new(),
            events: Vec::new(),
        };
        builtins::register(&mut r);
        r
    }

    /// Adds a command; a name may be registered once.
    pub fn register(
        &mut self,
        def: CommandDef,
        handler: impl Handler + 'static,
    ) -> Result<(), RegistryError> {
        if self.index.contains_key(&def.name) {
            return Err(RegistryError::DuplicateCommand(def.name));
        }
        self.index.insert(def.name.clone(), self.entries.len());
        self.entries.push(Entry {
            def,
            handler: Arc::new(handler),
        });
        Ok(())
    }

    /// Replaces (or adds) a command, e.g. to override a built-in.
    pub fn replace(&mut self, def: CommandDef, handler: impl Handler + 'static) {
        let entry = Entry {
            def,
            handler: Arc::new(handler),
        };
        match self.index.get(&entry.def.name) {
            Some(&i) => self.entries[i] = entry,
            None => {
                self.index
                    .insert(entry.def.name.clone(), self.entries.len());
                self.entries.push(entry);
            }
        }
    }

    /// Declares an event for `query-qmp-schema` (emitting does not require it).
    pub fn register_event(&mut self, def: EventDef) -> Result<(), RegistryError> {
        if self.events.iter().any(|e| e.name == def.name) {
            return Err(RegistryError::DuplicateEvent(def.name));
        }
        self.events.push(def);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&CommandDef> {
        self.entry(name).map(|e| &e.def)
    }

    pub(crate) fn entry(&self, name: &str) -> Option<&Entry> {
        self.index.get(name).and_then(|&i| self.entries.get(i))
    }

    /// Commands in registration order.
    pub fn commands(&self) -> impl Iterator<Item = &CommandDef> {
        self.entries.iter().map(|e| &e.def)
    }

    pub fn events(&self) -> impl Iterator<Item = &EventDef> {
        self.events.iter()
    }

    /// The `query-qmp-schema` value for everything registered.
    pub fn schema(&self) -> Value {
        introspect(self.commands(), self.events())
    }
}
