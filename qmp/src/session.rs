//! The per-client context handed to command handlers.

use crate::events::{ClientPort, EventBus};
use crate::server::Server;
use std::sync::Arc;

/// One QMP connection: its negotiation state and a handle on the server.
pub struct Session {
    server: Server,
    port: Arc<ClientPort>,
    oob_offered: bool,
    oob_enabled: bool,
    negotiated: bool,
    /// Set when negotiation just completed: events start flowing only after the
    /// `qmp_capabilities` response is queued, as under QEMU's big lock.
    subscribe_pending: bool,
}

impl Session {
    pub(crate) fn new(server: Server, port: Arc<ClientPort>, oob_offered: bool) -> Self {
        Session {
            server,
            port,
            oob_offered,
            oob_enabled: false,
            negotiated: false,
            subscribe_pending: false,
        }
    }

    /// A number unique to this connection for the server's lifetime.
    pub fn client_id(&self) -> u64 {
        self.port.id
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Events emitted here reach this client before the running command's response.
    pub fn events(&self) -> &EventBus {
        self.server.events()
    }

    /// True once `qmp_capabilities` has succeeded.
    pub fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// Whether the greeting offered the `oob` capability (sockets: yes; stdio: no).
    pub fn oob_offered(&self) -> bool {
        self.oob_offered
    }

    /// Whether the client enabled `oob` during negotiation.
    pub fn oob_enabled(&self) -> bool {
        self.oob_enabled
    }

    pub(crate) fn complete_negotiation(&mut self, oob: bool) {
        self.negotiated = true;
        self.oob_enabled = oob;
        self.subscribe_pending = true;
    }

    /// True once this client is gone (its input ended) or the server is stopping: a command
    /// that waits (for a FIFO's writer, say) should give up then, so that nothing waits for
    /// it in vain. Commands already read are still answered.
    pub fn cancelled(&self) -> bool {
        !self.port.is_open() || self.port.input_ended() || self.server.is_stopping()
    }

    /// A second context on the same connection, for the in-band dispatcher once `oob` is
    /// enabled: negotiation is over by then, so both see the same, fixed state.
    pub(crate) fn fork(&self) -> Session {
        Session {
            server: self.server.clone(),
            port: self.port.clone(),
            oob_offered: self.oob_offered,
            oob_enabled: self.oob_enabled,
            negotiated: self.negotiated,
            subscribe_pending: false,
        }
    }

    /// Whether the response to the current command starts events (taken once).
    pub(crate) fn take_subscribe_pending(&mut self) -> bool {
        std::mem::take(&mut self.subscribe_pending)
    }
}
