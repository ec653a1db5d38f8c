//! Character backends for the serial console (`-serial`): where the guest's output goes and
//! where its input comes from. They outlive machine resets.

use crate::cli::SerialSpec;
use devices::legacy::serial::SharedWriter;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("-serial file:{path}: could not open '{path}': {source}")]
    OpenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("-serial unix:{path}: could not listen: {source}")]
    Listen {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where console input comes from.
pub enum ConsoleInput {
    None,
    Stdin,
    /// A listening socket; a connected client is input and output.
    Socket {
        listener: UnixListener,
        client: Option<UnixStream>,
    },
}

pub struct Console {
    pub output: SharedWriter,
    pub input: ConsoleInput,
    /// A socket path to remove on exit.
    pub socket_path: Option<PathBuf>,
}

impl Console {
    pub fn open(spec: &SerialSpec) -> Result<Self, ConsoleError> {
        let (output, input, socket_path): (Box<dyn Write + Send>, _, _) = match spec {
            SerialSpec::Stdio => (Box::new(std::io::stdout()), ConsoleInput::Stdin, None),
            SerialSpec::Null | SerialSpec::None => {
                (Box::new(std::io::sink()), ConsoleInput::None, None)
            }
            SerialSpec::File(path) => {
                let file =
                    std::fs::File::create(path).map_err(|source| ConsoleError::OpenFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                (Box::new(file), ConsoleInput::None, None)
            }
            SerialSpec::UnixServer { path, wait } => {
                let listen_err = |source| ConsoleError::Listen {
                    path: path.display().to_string(),
                    source,
                };
                // Like QEMU, replace a stale socket file; 0600 from the start.
                let listener = qmp::bind_unix_private(path).map_err(listen_err)?;
                // wait=on: block until the first client connects, as QEMU does.
                let client = if *wait {
                    Some(listener.accept().map_err(listen_err)?.0)
                } else {
                    None
                };
                listener.set_nonblocking(true).map_err(listen_err)?;
                let output: Box<dyn Write + Send> = match &client {
                    Some(stream) => Box::new(stream.try_clone().map_err(listen_err)?),
                    None => Box::new(std::io::sink()),
                };
                (
                    output,
                    ConsoleInput::Socket { listener, client },
                    Some(path.clone()),
                )
            }
        };
        Ok(Self {
            output: SharedWriter::new(output),
            input,
            socket_path,
        })
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}
