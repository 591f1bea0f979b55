//! The `logging` driver: networking-sfc's `dummy` driver made visible. It accepts every hook
//! and logs it (method name, resource id, and at debug level the resource itself), which makes
//! the hook order of a request readable in the controller's log.

use async_trait::async_trait;

use super::{HookCall, SfcDriver};

/// The name it is configured by.
pub const NAME: &str = "logging";

#[derive(Debug, Clone, Copy, Default)]
pub struct LoggingDriver;

#[async_trait]
impl SfcDriver for LoggingDriver {
    fn name(&self) -> &str {
        NAME
    }

    async fn on_hook(&self, call: HookCall) -> Result<(), super::DriverError> {
        tracing::info!(driver = NAME, method = %call.name, id = %call.id, "SFC driver call");
        tracing::debug!(
            driver = NAME,
            method = %call.name,
            current = %call.current,
            original = ?call.original.as_ref().map(ToString::to_string),
            "SFC driver call detail"
        );
        Ok(())
    }
}
