//! C ABI over the blocking agent, for firmware written in C (`include/vnf_agent.h`).
//!
//! An `sfc_agent` collects its configuration (port, key, state directory, instance, one
//! callback per service), then `sfc_agent_run` runs it on the calling thread with a private
//! current-thread runtime, calling the callbacks on that same thread, until `sfc_agent_stop`.
//! Stopping must work from another thread and from a signal handler, so it only stores a flag
//! and writes one byte to a socket pair whose other end the running agent watches: both are
//! async-signal-safe, and a stop that comes before the run starts is not lost.
//!
//! Every entry point checks its pointers, catches panics (none may cross the C boundary) and
//! reports failures as -1 or NULL with a message for `sfc_last_error`. This is the only module
//! of the crate with `unsafe` code; each block says why it is sound.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

use relay_protocol::{InstanceKey, ServiceName, Uuid};
use tokio_util::sync::CancellationToken;

use crate::error_chain;

use crate::agent::Agent;
use crate::handler::{ConfigUpdate, Handler, Rejection};
use crate::transport::{PortSpec, DEFAULT_PORT_NAME};

/// Size of the error buffer handed to callbacks (`SFC_ERROR_BUF_LEN`): the protocol's bound on
/// a rejection reason.
pub const ERROR_BUF_LEN: usize = relay_protocol::message::MAX_TEXT;

/// One configuration update, as C sees it (`struct sfc_config_update`). Every pointer is valid
/// only during the callback.
#[repr(C)]
#[derive(Debug)]
pub struct SfcConfigUpdate {
    pub instance: [u8; 16],
    pub config_id: [u8; 16],
    /// The same UUIDs as lowercase hyphenated strings, NUL-terminated.
    pub instance_str: [c_char; 37],
    pub config_id_str: [c_char; 37],
    /// NUL-terminated service name.
    pub service: *const c_char,
    pub version: u64,
    pub payload: *const u8,
    pub payload_len: usize,
}

/// `sfc_apply_fn`: returns 0 when the update is applied; otherwise writes a NUL-terminated
/// reason into `err_buf` (at most `err_buf_len` bytes) and returns nonzero.
pub type SfcApplyFn = unsafe extern "C" fn(
    update: *const SfcConfigUpdate,
    err_buf: *mut c_char,
    err_buf_len: usize,
    user: *mut c_void,
) -> c_int;

/// The opaque `sfc_agent`.
#[derive(Debug)]
pub struct SfcAgent {
    setup: Mutex<Option<Setup>>,
    stop_requested: AtomicBool,
    stop_tx: StdUnixStream,
    stop_rx: Mutex<Option<StdUnixStream>>,
}

struct Setup {
    port: PortSpec,
    key: InstanceKey,
    state_dir: Option<PathBuf>,
    instance: Option<Uuid>,
    handlers: Vec<(ServiceName, Box<dyn Handler>)>,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("port", &self.port)
            .field("state_dir", &self.state_dir)
            .field("instance", &self.instance)
            .field(
                "services",
                &self.handlers.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_error(msg: impl std::fmt::Display) {
    // A message with an interior NUL is cut there rather than lost.
    let text = msg.to_string();
    let text = text.split('\0').next().unwrap_or_default().to_owned();
    let c = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(c));
}

/// Runs `f`, turning an `Err` or a panic into `fail` and a message for `sfc_last_error`.
fn guard<T>(fail: T, f: impl FnOnce() -> Result<T, String>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(msg)) => {
            set_error(msg);
            fail
        }
        Err(_) => {
            set_error("internal error: the agent panicked (see stderr)");
            fail
        }
    }
}

/// Reads an optional C string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid during the call.
unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, String> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, and the caller guarantees a valid NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|_| format!("{what} is not valid UTF-8"))
}

/// Installs a stderr logger once if `SFC_AGENT_LOG` is set (e.g. `info`, `vnf_agent=debug`).
fn init_logging() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if let Ok(filter) = std::env::var("SFC_AGENT_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

/// `sfc_agent *sfc_agent_new(const char *port, const char *key_hex, const char *state_dir)`.
///
/// `port`: a port specification (see [`PortSpec`]); NULL for the default virtio-serial port.
/// `key_hex`: 64 hex digits; NULL to read the key from the SMBIOS OEM strings.
/// `state_dir`: where the applied versions are kept; NULL to keep them in memory only.
///
/// # Safety
/// Each argument is NULL or a valid NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn sfc_agent_new(
    port: *const c_char,
    key_hex: *const c_char,
    state_dir: *const c_char,
) -> *mut SfcAgent {
    init_logging();
    guard(ptr::null_mut(), || {
        // SAFETY: the caller passes NULL or valid strings (function contract).
        let (port, key_hex, state_dir) = unsafe {
            (
                opt_str(port, "port")?,
                opt_str(key_hex, "key")?,
                opt_str(state_dir, "state_dir")?,
            )
        };
        let port: PortSpec = port
            .unwrap_or(DEFAULT_PORT_NAME)
            .parse()
            .map_err(|e: crate::transport::PortSpecError| e.to_string())?;
        let key = match key_hex {
            Some(hex) => InstanceKey::from_hex(hex)
                .map_err(|e| format!("invalid key_hex: {}", error_chain(&e)))?,
            None => crate::key::from_smbios(std::path::Path::new(crate::key::DEFAULT_SYSFS))
                .map_err(|e| format!("no key_hex given and {}", error_chain(&e)))?,
        };
        let (stop_tx, stop_rx) =
            StdUnixStream::pair().map_err(|e| format!("cannot create the stop channel: {e}"))?;
        stop_tx
            .set_nonblocking(true)
            .map_err(|e| format!("cannot create the stop channel: {e}"))?;
        let agent = SfcAgent {
            setup: Mutex::new(Some(Setup {
                port,
                key,
                state_dir: state_dir.map(PathBuf::from),
                instance: None,
                handlers: Vec::new(),
            })),
            stop_requested: AtomicBool::new(false),
            stop_tx,
            stop_rx: Mutex::new(Some(stop_rx)),
        };
        Ok(Box::into_raw(Box::new(agent)))
    })
}

/// Borrows the agent behind a C pointer.
///
/// # Safety
/// `agent` is NULL or a pointer from `sfc_agent_new` not yet freed.
unsafe fn agent_ref<'a>(agent: *const SfcAgent) -> Result<&'a SfcAgent, String> {
    // SAFETY: the caller guarantees NULL or a live pointer from sfc_agent_new.
    unsafe { agent.as_ref() }.ok_or_else(|| "agent is NULL".to_owned())
}

/// Runs `f` on the agent's setup, which exists until `sfc_agent_run` takes it.
fn with_setup<T>(
    agent: &SfcAgent,
    f: impl FnOnce(&mut Setup) -> Result<T, String>,
) -> Result<T, String> {
    let mut setup = agent
        .setup
        .lock()
        .map_err(|_| "the agent is unusable after a panic".to_owned())?;
    match setup.as_mut() {
        Some(s) => f(s),
        None => Err("the agent is running or has run; configure it before sfc_agent_run".into()),
    }
}

/// `int sfc_agent_set_instance(sfc_agent *agent, const char *instance_uuid)`: pushes for any
/// other instance are rejected. Returns 0, or -1.
///
/// # Safety
/// `agent` is a live agent; `instance_uuid` NULL or a valid string.
#[no_mangle]
pub unsafe extern "C" fn sfc_agent_set_instance(
    agent: *mut SfcAgent,
    instance_uuid: *const c_char,
) -> c_int {
    guard(-1, || {
        // SAFETY: function contract.
        let (agent, text) = unsafe { (agent_ref(agent)?, opt_str(instance_uuid, "instance")?) };
        let text = text.ok_or("instance_uuid is NULL")?;
        let uuid = Uuid::parse_str(text).map_err(|e| format!("invalid instance {text:?}: {e}"))?;
        with_setup(agent, |s| {
            s.instance = Some(uuid);
            Ok(0)
        })
    })
}

/// `int sfc_agent_register(sfc_agent *agent, const char *service, sfc_apply_fn apply,
/// void *user)`. Returns 0, or -1 (NULL argument, invalid or duplicate service name, agent
/// already running).
///
/// # Safety
/// `agent` is a live agent; `service` a valid string; `apply` a valid function that may be
/// called with `user` on the thread that calls `sfc_agent_run`, until the agent is freed.
#[no_mangle]
pub unsafe extern "C" fn sfc_agent_register(
    agent: *mut SfcAgent,
    service: *const c_char,
    apply: Option<SfcApplyFn>,
    user: *mut c_void,
) -> c_int {
    guard(-1, || {
        // SAFETY: function contract.
        let (agent, service) = unsafe { (agent_ref(agent)?, opt_str(service, "service")?) };
        let service = service.ok_or("service is NULL")?;
        let apply = apply.ok_or("apply callback is NULL")?;
        let name = ServiceName::new(service)?;
        with_setup(agent, |s| {
            if s.handlers.iter().any(|(n, _)| *n == name) {
                return Err(format!("service {name} is registered twice"));
            }
            let c_name = CString::new(service).map_err(|e| e.to_string())?;
            s.handlers.push((
                name,
                Box::new(CallbackHandler {
                    apply,
                    user: UserPtr(user),
                    service: c_name,
                }),
            ));
            Ok(0)
        })
    })
}

/// `int sfc_agent_run(sfc_agent *agent)`: runs on the calling thread until `sfc_agent_stop`.
/// Returns 0 after a stop, -1 on a fatal error (see `sfc_last_error`). An agent runs once.
///
/// # Safety
/// `agent` is a live agent, not freed before this returns.
#[no_mangle]
pub unsafe extern "C" fn sfc_agent_run(agent: *mut SfcAgent) -> c_int {
    guard(-1, || {
        // SAFETY: function contract.
        let agent = unsafe { agent_ref(agent)? };
        let setup = agent
            .setup
            .lock()
            .map_err(|_| "the agent is unusable after a panic".to_owned())?
            .take()
            .ok_or("the agent is running or has already run")?;
        let stop_rx = agent
            .stop_rx
            .lock()
            .map_err(|_| "the agent is unusable after a panic".to_owned())?
            .take()
            .ok_or("the agent is running or has already run")?;
        let mut builder = Agent::builder(setup.key).port(setup.port);
        if let Some(dir) = setup.state_dir {
            builder = builder.state_dir(dir);
        }
        if let Some(instance) = setup.instance {
            builder = builder.instance(instance);
        }
        for (name, handler) in setup.handlers {
            builder = builder.handler(name, handler);
        }
        let runner = builder.build().map_err(|e| error_chain(&e))?.apply_inline();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("cannot start the agent's runtime: {e}"))?;
        let stopped = &agent.stop_requested;
        runtime
            .block_on(async move {
                let shutdown = CancellationToken::new();
                stop_rx.set_nonblocking(true)?;
                let stop_rx = tokio::net::UnixStream::from_std(stop_rx)?;
                let token = shutdown.clone();
                let watcher = tokio::spawn(async move {
                    // Any byte, or the other end closing, means stop.
                    let _ = stop_rx.readable().await;
                    token.cancel();
                });
                if stopped.load(Ordering::SeqCst) {
                    shutdown.cancel();
                }
                let result = runner.run(shutdown).await;
                watcher.abort();
                Ok::<_, std::io::Error>(result)
            })
            .map_err(|e| format!("cannot watch for sfc_agent_stop: {e}"))?
            .map_err(|e| error_chain(&e))?;
        Ok(0)
    })
}

/// `void sfc_agent_stop(sfc_agent *agent)`: makes `sfc_agent_run` return (after writing out
/// pending acknowledgements, within a second). Safe to call from any thread and from a signal
/// handler, before or during the run. NULL is ignored.
///
/// # Safety
/// `agent` is NULL or a live agent.
#[no_mangle]
pub unsafe extern "C" fn sfc_agent_stop(agent: *mut SfcAgent) {
    // No guard (it allocates nothing, takes no lock, cannot panic): this must stay
    // async-signal-safe. A full socket buffer means a stop is already pending.
    // SAFETY: function contract.
    if let Some(agent) = unsafe { agent.as_ref() } {
        agent.stop_requested.store(true, Ordering::SeqCst);
        // MSG_NOSIGNAL: the other end is gone once a run ended, and C programs do not ignore
        // SIGPIPE as Rust programs do.
        let _ = rustix::net::send(
            &agent.stop_tx,
            &[1],
            rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT,
        );
    }
}

/// `void sfc_agent_free(sfc_agent *agent)`: releases the agent. NULL is ignored.
///
/// # Safety
/// `agent` is NULL or a pointer from `sfc_agent_new`, not running, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn sfc_agent_free(agent: *mut SfcAgent) {
    if agent.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a pointer from Box::into_raw in sfc_agent_new, freed once (contract).
        drop(unsafe { Box::from_raw(agent) });
    }));
}

/// `const char *sfc_last_error(void)`: the message of this thread's last failed call, or NULL.
/// Valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn sfc_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().as_ref().map_or(ptr::null(), |c| c.as_ptr())))
        .unwrap_or(ptr::null())
}

/// The C caller's context pointer.
struct UserPtr(*mut c_void);

// SAFETY: the pointer is only handed back to the C callback, which `sfc_agent_register`'s
// contract allows on the thread running `sfc_agent_run`; Rust never dereferences it.
unsafe impl Send for UserPtr {}

/// A [`Handler`] that calls a C function.
struct CallbackHandler {
    apply: SfcApplyFn,
    user: UserPtr,
    service: CString,
}

fn uuid_str(u: &Uuid) -> [c_char; 37] {
    let mut buf = [0u8; 36];
    u.hyphenated().encode_lower(&mut buf);
    let mut out = [0 as c_char; 37];
    for (o, b) in out.iter_mut().zip(buf) {
        *o = b as c_char;
    }
    out
}

impl Handler for CallbackHandler {
    fn apply(&mut self, update: &ConfigUpdate) -> Result<(), Rejection> {
        let c_update = SfcConfigUpdate {
            instance: *update.instance.as_bytes(),
            config_id: *update.config_id.as_bytes(),
            instance_str: uuid_str(&update.instance),
            config_id_str: uuid_str(&update.config_id),
            service: self.service.as_ptr(),
            version: update.version,
            payload: update.payload.as_ptr(),
            payload_len: update.payload.len(),
        };
        let mut err = vec![0u8; ERROR_BUF_LEN];
        // SAFETY: `apply` is a valid function (sfc_agent_register's contract); `c_update`,
        // the strings and payload it points to, and `err` outlive the call; `err_buf_len` is
        // the length of `err`.
        let rc = unsafe {
            (self.apply)(
                &c_update,
                err.as_mut_ptr().cast::<c_char>(),
                err.len(),
                self.user.0,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // The callback may have filled the buffer without a terminator.
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        let reason = String::from_utf8_lossy(&err[..end]).trim().to_owned();
        Err(Rejection::new(if reason.is_empty() {
            format!("the {} callback failed with code {rc}", update.service)
        } else {
            reason
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const KEY: &CStr = c"4242424242424242424242424242424242424242424242424242424242424242";

    fn last_error() -> String {
        let p = sfc_last_error();
        assert!(!p.is_null());
        // SAFETY: a string from sfc_last_error, valid until the next failing call.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    unsafe extern "C" fn reject(
        update: *const SfcConfigUpdate,
        err: *mut c_char,
        len: usize,
        _user: *mut c_void,
    ) -> c_int {
        // SAFETY: the agent passes a valid update and a buffer of `len` bytes.
        unsafe {
            assert_eq!((*update).version, 9);
            assert_eq!(CStr::from_ptr((*update).service), c"files");
            let msg = b"nope\0";
            ptr::copy_nonoverlapping(msg.as_ptr().cast::<c_char>(), err, msg.len().min(len));
        }
        7
    }

    unsafe extern "C" fn silent_failure(
        _: *const SfcConfigUpdate,
        _: *mut c_char,
        _: usize,
        _: *mut c_void,
    ) -> c_int {
        -3
    }

    #[test]
    fn null_and_invalid_arguments_are_refused_with_a_message() {
        // SAFETY: every pointer below is NULL, a C string literal, or a live agent.
        unsafe {
            assert!(sfc_agent_new(c"x".as_ptr(), c"zz".as_ptr(), ptr::null()).is_null());
            assert!(last_error().contains("invalid key_hex"), "{}", last_error());
            assert!(sfc_agent_new(c"a/b".as_ptr(), KEY.as_ptr(), ptr::null()).is_null());
            assert!(last_error().contains("invalid port"));

            assert_eq!(
                sfc_agent_register(
                    ptr::null_mut(),
                    c"files".as_ptr(),
                    Some(reject),
                    ptr::null_mut()
                ),
                -1
            );
            assert_eq!(last_error(), "agent is NULL");
            assert_eq!(sfc_agent_run(ptr::null_mut()), -1);
            sfc_agent_stop(ptr::null_mut());
            sfc_agent_free(ptr::null_mut());

            let a = sfc_agent_new(c"unix:/nonexistent".as_ptr(), KEY.as_ptr(), ptr::null());
            assert!(!a.is_null());
            assert_eq!(
                sfc_agent_register(a, c"Files!".as_ptr(), Some(reject), ptr::null_mut()),
                -1
            );
            assert!(last_error().contains("service name"));
            assert_eq!(
                sfc_agent_register(a, c"files".as_ptr(), None, ptr::null_mut()),
                -1
            );
            assert_eq!(
                sfc_agent_register(a, ptr::null(), Some(reject), ptr::null_mut()),
                -1
            );
            assert_eq!(
                sfc_agent_register(a, c"files".as_ptr(), Some(reject), ptr::null_mut()),
                0
            );
            assert_eq!(
                sfc_agent_register(a, c"files".as_ptr(), Some(reject), ptr::null_mut()),
                -1
            );
            assert!(last_error().contains("twice"));
            assert_eq!(sfc_agent_set_instance(a, c"not-a-uuid".as_ptr()), -1);
            assert_eq!(
                sfc_agent_set_instance(a, c"6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f".as_ptr()),
                0
            );
            // A stop before the run is not lost: the run returns at once.
            sfc_agent_stop(a);
            assert_eq!(sfc_agent_run(a), 0);
            assert_eq!(sfc_agent_run(a), -1);
            assert!(last_error().contains("already run"));
            sfc_agent_free(a);
        }
    }

    #[test]
    fn callbacks_see_the_update_and_report_reasons() {
        let update = ConfigUpdate {
            instance: Uuid::from_u128(1),
            service: ServiceName::new("files").unwrap(),
            config_id: Uuid::from_u128(2),
            version: 9,
            payload: b"payload".to_vec(),
        };
        let mut h = CallbackHandler {
            apply: reject,
            user: UserPtr(ptr::null_mut()),
            service: CString::new("files").unwrap(),
        };
        assert_eq!(h.apply(&update).unwrap_err().0, "nope");
        let mut h = CallbackHandler {
            apply: silent_failure,
            user: UserPtr(ptr::null_mut()),
            service: CString::new("files").unwrap(),
        };
        assert_eq!(
            h.apply(&update).unwrap_err().0,
            "the files callback failed with code -3"
        );
        let s = uuid_str(&Uuid::from_u128(1));
        // SAFETY: uuid_str NUL-terminates its 37-byte buffer.
        let s = unsafe { CStr::from_ptr(s.as_ptr()) };
        assert_eq!(s, c"00000000-0000-0000-0000-000000000001");
    }
}
