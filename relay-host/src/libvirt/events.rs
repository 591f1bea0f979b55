//! The only unsafe code in the crate: raw `virt::sys` bindings for what the `virt` crate does not
//! wrap safely, namely libvirt's default event loop, domain lifecycle callbacks and connection
//! close callbacks.
//!
//! Design:
//! - libvirt delivers events only through an event loop registered *before* a connection is
//!   opened, and it cannot be replaced later: [`ensure_event_impl`] registers the default
//!   implementation once per process (and silences libvirt's print-to-stderr error handler;
//!   errors reach callers as `Result`s), and every connection is opened after it.
//! - One thread, `libvirt-events`, runs `virEventRunDefaultImpl` while at least one
//!   [`EventLoopGuard`] exists. Dropping the last guard stops it: a timer registered once with
//!   a period of -1 (disabled) is armed with period 0 to wake the loop, which then sees the stop
//!   flag. No polling.
//! - [`Registration`] ties a lifecycle callback and a close callback to one connection. The
//!   `extern "C"` trampolines only copy the domain UUID, name and event codes out of libvirt's
//!   borrowed objects and send a [`Notice`] on a `std::sync::mpsc` channel: they never block,
//!   never call back into libvirt beyond reading the domain object, and never panic.
//! - Ownership of callback contexts: the lifecycle context is handed to libvirt together with a
//!   free function, which libvirt calls exactly once (on deregistration or when the connection
//!   goes away); on a failed registration libvirt leaves it to us. The close callback context is
//!   kept by the `Registration` instead, because drivers without close-callback support (the
//!   test driver) accept the registration but would never call the free function; it is freed
//!   after unregistering, which waits for a running callback under libvirt's lock.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use relay_protocol::Uuid;
use virt::connect::Connect;
use virt::sys;

/// What the callbacks report to the discovery thread.
#[derive(Debug)]
pub(super) enum Notice {
    /// A lifecycle event from the connection with this generation.
    Lifecycle {
        generation: u64,
        uuid: Uuid,
        name: String,
        event: i32,
        detail: i32,
    },
    /// The connection with this generation closed; `reason` is a `VIR_CONNECT_CLOSE_REASON_*`.
    Closed { generation: u64, reason: i32 },
    /// The discovery's shutdown token was cancelled.
    Cancelled,
    /// A hint from outside libvirt's event stream (the libvirt hook, through
    /// [`super::Hints`]): look at this domain now (`started`) or drop it (`stopped`).
    Hint { uuid: Uuid, started: bool },
}

struct CallbackCtx {
    generation: u64,
    tx: Sender<Notice>,
}

/// Why the event implementation could not be set up; the message is libvirt's.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EventLoopError(String);

/// The wake-up timer's id, once the default implementation is registered.
static EVENT_IMPL: OnceLock<Result<c_int, EventLoopError>> = OnceLock::new();

/// Registers libvirt's default event loop implementation, once per process. Must run before
/// any connection whose events are wanted is opened.
pub(super) fn ensure_event_impl() -> Result<(), EventLoopError> {
    wake_timer().map(|_| ())
}

fn wake_timer() -> Result<c_int, EventLoopError> {
    EVENT_IMPL
        .get_or_init(|| {
            virt::error::clear_error_callback();
            virt::event::event_register_default_impl()
                .map_err(|e| EventLoopError(e.to_string()))?;
            // SAFETY: the default implementation is registered (above); the callback is a plain
            // function that ignores its null opaque pointer, and there is no free function.
            let timer =
                unsafe { sys::virEventAddTimeout(-1, Some(wake_cb), ptr::null_mut(), None) };
            if timer < 0 {
                return Err(EventLoopError(virt::error::Error::last_error().to_string()));
            }
            Ok(timer)
        })
        .clone()
}

unsafe extern "C" fn wake_cb(timer: c_int, _opaque: *mut c_void) {
    // SAFETY: `timer` is the id libvirt passed us for this very timer; disarming it is allowed
    // from inside its own callback.
    unsafe { sys::virEventUpdateTimeout(timer, -1) };
}

struct LoopState {
    users: usize,
    thread: Option<JoinHandle<()>>,
}

static LOOP: Mutex<LoopState> = Mutex::new(LoopState {
    users: 0,
    thread: None,
});
static STOP: AtomicBool = AtomicBool::new(false);

/// Keeps the `libvirt-events` thread running. Must not be dropped on that thread (nothing in
/// this crate hands one to a callback).
#[derive(Debug)]
pub(super) struct EventLoopGuard(());

impl EventLoopGuard {
    pub(super) fn acquire() -> Result<Self, super::Error> {
        ensure_event_impl()?;
        let mut state = LOOP.lock().unwrap_or_else(PoisonError::into_inner);
        if state.users == 0 {
            STOP.store(false, Ordering::SeqCst);
            let thread = std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(run_event_loop)
                .map_err(|source| super::Error::Thread {
                    name: "libvirt-events",
                    source,
                })?;
            state.thread = Some(thread);
        }
        state.users += 1;
        Ok(Self(()))
    }
}

impl Drop for EventLoopGuard {
    fn drop(&mut self) {
        let mut state = LOOP.lock().unwrap_or_else(PoisonError::into_inner);
        state.users -= 1;
        if state.users > 0 {
            return;
        }
        STOP.store(true, Ordering::SeqCst);
        if let Ok(timer) = wake_timer() {
            // SAFETY: `timer` was returned by virEventAddTimeout and is never removed; updating
            // a timer is thread-safe in the default implementation and interrupts its poll().
            unsafe { sys::virEventUpdateTimeout(timer, 0) };
        }
        // Joined under the lock so that a concurrent `acquire` starts a fresh thread only after
        // this one is gone; the loop thread never takes the lock.
        if let Some(thread) = state.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the libvirt event loop thread panicked");
            }
        }
    }
}

fn run_event_loop() {
    tracing::debug!("libvirt event loop started");
    while !STOP.load(Ordering::SeqCst) {
        if let Err(e) = virt::event::event_run_default_impl() {
            tracing::warn!(error = %e, "libvirt event loop iteration failed");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    tracing::debug!("libvirt event loop stopped");
}

/// A lifecycle callback and a close callback registered on one connection; dropping it
/// deregisters both and releases the connection reference it holds.
#[derive(Debug)]
pub(super) struct Registration {
    conn: sys::virConnectPtr,
    lifecycle_id: c_int,
    /// `Some` while the close callback is registered; freed only after unregistering.
    close_ctx: Option<*mut CallbackCtx>,
}

impl Registration {
    /// Registers both callbacks on `conn`; they send to `tx`, tagged with `generation`.
    pub(super) fn new(
        conn: &Connect,
        generation: u64,
        tx: Sender<Notice>,
    ) -> Result<Self, virt::error::Error> {
        let ptr = conn.as_ptr();
        // SAFETY: `ptr` is an open connection (`Connect` is only closed by its owner, which
        // outlives this call); the extra reference keeps it valid until `drop` releases it.
        if unsafe { sys::virConnectRef(ptr) } < 0 {
            return Err(virt::error::Error::last_error());
        }
        let mut reg = Self {
            conn: ptr,
            lifecycle_id: -1,
            close_ctx: None,
        };

        let ctx = Box::into_raw(Box::new(CallbackCtx {
            generation,
            tx: tx.clone(),
        }));
        // SAFETY: libvirt calls a VIR_DOMAIN_EVENT_ID_LIFECYCLE callback with the
        // `virConnectDomainEventCallback` signature; the generic type is only how the C API
        // spells "any callback" (C code casts with VIR_DOMAIN_EVENT_CALLBACK), and both are
        // `extern "C"` function pointers of the same size.
        let generic = unsafe {
            std::mem::transmute::<
                unsafe extern "C" fn(
                    sys::virConnectPtr,
                    sys::virDomainPtr,
                    c_int,
                    c_int,
                    *mut c_void,
                ) -> c_int,
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
            >(lifecycle_trampoline)
        };
        // SAFETY: `ptr` is valid (we hold a reference); a null domain means "all domains";
        // `ctx` is a live heap allocation whose ownership passes to libvirt on success
        // (released through `free_ctx`).
        let id = unsafe {
            sys::virConnectDomainEventRegisterAny(
                ptr,
                ptr::null_mut(),
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
                Some(generic),
                ctx.cast(),
                Some(free_ctx),
            )
        };
        if id < 0 {
            let err = virt::error::Error::last_error();
            // SAFETY: on failure libvirt did not keep `ctx` (it deregisters without calling the
            // free function), so it is still exclusively ours.
            drop(unsafe { Box::from_raw(ctx) });
            return Err(err); // `reg` drops: releases the connection reference.
        }
        reg.lifecycle_id = id;

        let close_ctx = Box::into_raw(Box::new(CallbackCtx { generation, tx }));
        // SAFETY: `ptr` is valid; `close_ctx` stays allocated until `drop` has unregistered
        // the callback (no free function, so libvirt never frees it).
        let rc = unsafe {
            sys::virConnectRegisterCloseCallback(
                ptr,
                Some(close_trampoline),
                close_ctx.cast(),
                None,
            )
        };
        if rc < 0 {
            let err = virt::error::Error::last_error();
            // SAFETY: registration failed, libvirt holds no copy of the pointer.
            drop(unsafe { Box::from_raw(close_ctx) });
            return Err(err); // `reg` drops: deregisters the lifecycle callback.
        }
        reg.close_ctx = Some(close_ctx);
        Ok(reg)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(ctx) = self.close_ctx.take() {
            // SAFETY: `self.conn` is valid (we hold a reference). Unregistering takes the lock
            // libvirt holds while calling the callback, so once it returns the callback is not
            // running and will not run again. It fails harmlessly when the callback already
            // fired (libvirt then dropped it) or was never stored (drivers without support).
            unsafe { sys::virConnectUnregisterCloseCallback(self.conn, Some(close_trampoline)) };
            // SAFETY: allocated by `Box::into_raw` in `new`, and libvirt no longer uses it.
            drop(unsafe { Box::from_raw(ctx) });
        }
        if self.lifecycle_id >= 0 {
            // SAFETY: valid connection and an id libvirt returned for it. Deregistering removes
            // the callback locally even when the daemon is gone (the call then fails
            // afterwards); libvirt frees the context through `free_ctx`.
            let rc =
                unsafe { sys::virConnectDomainEventDeregisterAny(self.conn, self.lifecycle_id) };
            if rc < 0 {
                tracing::debug!(
                    error = %virt::error::Error::last_error(),
                    "deregistering the lifecycle callback"
                );
            }
        }
        // SAFETY: releases the reference taken in `new`; the pointer is not used afterwards.
        unsafe { sys::virConnectClose(self.conn) };
    }
}

unsafe extern "C" fn lifecycle_trampoline(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the `CallbackCtx` registered with this callback; libvirt frees it
    // (through `free_ctx`) only after the last invocation.
    let ctx = unsafe { &*opaque.cast::<CallbackCtx>() };
    // SAFETY: libvirt passes a valid domain that it keeps alive for the duration of the call.
    let Some((uuid, name)) = (unsafe { domain_identity(dom) }) else {
        tracing::warn!(
            event,
            "lifecycle event for a domain without a readable UUID"
        );
        return 0;
    };
    // A send fails only when the discovery thread is gone; nothing to do then.
    let _ = ctx.tx.send(Notice::Lifecycle {
        generation: ctx.generation,
        uuid,
        name,
        event,
        detail,
    });
    0
}

unsafe extern "C" fn close_trampoline(
    _conn: sys::virConnectPtr,
    reason: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: `opaque` is the close context `Registration` keeps allocated until it has
    // unregistered this callback.
    let ctx = unsafe { &*opaque.cast::<CallbackCtx>() };
    let _ = ctx.tx.send(Notice::Closed {
        generation: ctx.generation,
        reason,
    });
}

unsafe extern "C" fn free_ctx(opaque: *mut c_void) {
    // SAFETY: called once by libvirt with the pointer `Registration::new` produced by
    // `Box::into_raw` for the lifecycle callback.
    drop(unsafe { Box::from_raw(opaque.cast::<CallbackCtx>()) });
}

/// # Safety
/// `dom` must be a valid domain pointer for the duration of the call.
unsafe fn domain_identity(dom: sys::virDomainPtr) -> Option<(Uuid, String)> {
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `dom` is valid (caller); `buf` has the VIR_UUID_STRING_BUFLEN bytes the call
    // writes, including the terminating NUL.
    if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } < 0 {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated string.
    let uuid = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().ok()?;
    let uuid = Uuid::parse_str(uuid).ok()?;
    // SAFETY: `dom` is valid; the name is owned by the domain object and copied before return.
    let name_ptr = unsafe { sys::virDomainGetName(dom) };
    let name = if name_ptr.is_null() {
        String::new()
    } else {
        // SAFETY: non-null, NUL-terminated and alive as long as `dom`.
        unsafe { CStr::from_ptr(name_ptr) }
            .to_string_lossy()
            .into_owned()
    };
    Some((uuid, name))
}
