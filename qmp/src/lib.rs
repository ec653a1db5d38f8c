#![doc = include_str!("../README.md")]

mod accept_thread;
mod builtins;
pub mod endpoint;
pub mod error;
pub mod events;
pub mod parser;
pub mod protocol;
pub mod registry;
pub mod schema;
pub mod server;
pub mod session;
pub mod transport;
pub mod validate;
pub mod writer;

pub use accept_thread::AcceptThread;
pub use builtins::version_info_type;
pub use endpoint::{resolve_monitors, split_opts_os, ChardevSpec, MonMode, MonSpec, QmpEndpoint};
pub use error::{EndpointError, ErrorClass, QmpError, RegistryError, ServerError};
pub use events::{EventBus, Timestamp};
pub use protocol::ServerConfig;
pub use registry::{Answer, Handler, Registry, TextHandler};
pub use schema::{CommandDef, EnumType, EventDef, Member, ObjectType, Type, Variants};
pub use server::Server;
pub use session::Session;
pub use transport::{bind_unix_private, take_passed_fd, BoundAddr};

/// Re-exported so handlers can name argument maps without a direct dependency.
pub use serde_json::{Map, Value};
