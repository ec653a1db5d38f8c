//! The thread a QMP listener accepts clients on, started before its socket exists.

use std::sync::mpsc::channel;
use std::thread::{self, JoinHandle};

/// The name of a listener's accept thread.
pub(crate) const ACCEPT_THREAD: &str = "qmp-accept";

type AcceptJob = Box<dyn FnOnce() + Send>;

/// A listener's accept thread, started before its socket exists and waiting for its loop
/// ([`Server::listen_on`]). The VMM starts it first thing, so that when the socket listens
/// the first client is greeted by a thread that only wakes up: a thread created at that
/// moment, with the machine being built beside it, waited up to milliseconds on a loaded
/// host before its first instruction.
pub struct AcceptThread {
    job: Option<std::sync::mpsc::Sender<AcceptJob>>,
    thread: Option<JoinHandle<()>>,
}

impl AcceptThread {
    /// Start the thread with the termination signals (SIGTERM, SIGINT, SIGHUP) blocked, as
    /// they are in every thread the VMM starts once it reads them from a signalfd: started
    /// before that, it would otherwise be a thread the kernel may pick to die of one.
    pub fn spawn() -> std::io::Result<Self> {
        let (job, jobs) = channel::<AcceptJob>();
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut blocked: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above, for the caller's mask, which pthread_sigmask fills.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both sets are valid and owned by this frame; the signal numbers are valid.
        let rc = unsafe {
            libc::sigemptyset(&mut blocked);
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut blocked, sig);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, &mut old)
        };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // The new thread inherits the mask; the caller's is restored at once.
        let thread = thread::Builder::new()
            .name(ACCEPT_THREAD.into())
            .spawn(move || {
                // Dropped unused: the sender is gone and the thread ends.
                if let Ok(run) = jobs.recv() {
                    run();
                }
            });
        // SAFETY: `old` is the mask pthread_sigmask returned above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        let thread = thread?;
        Ok(AcceptThread {
            job: Some(job),
            thread: Some(thread),
        })
    }

    /// Run `job` (the accept loop) on this thread; its handle is returned for joining.
    pub(crate) fn run(mut self, job: AcceptJob) -> Option<JoinHandle<()>> {
        if let Some(tx) = self.job.take() {
            // The thread only ends once its sender is dropped, so it is there to receive.
            let _ = tx.send(job);
        }
        self.thread.take()
    }
}

impl Drop for AcceptThread {
    fn drop(&mut self) {
        // No job: the thread sees its channel closed and returns at once.
        drop(self.job.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
