//! The agent for firmware without an async runtime.
//!
//! [`BlockingAgent::run_until`] builds a private current-thread tokio runtime and runs the same
//! [`Agent`] on the calling thread until the shutdown token is cancelled (from any thread, or
//! from a handler). Handlers run on the calling thread too, one at a time, so firmware state
//! they touch needs no locking against the agent.

use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentBuilder, AgentError, AgentStats};

/// An [`Agent`] driven by a blocking call.
#[derive(Debug)]
pub struct BlockingAgent {
    agent: Agent,
}

impl BlockingAgent {
    /// Checks the configuration and loads the applied state, like [`AgentBuilder::build`].
    pub fn new(builder: AgentBuilder) -> Result<BlockingAgent, AgentError> {
        Ok(BlockingAgent {
            agent: builder.build()?.apply_inline(),
        })
    }

    /// The agent's counters.
    pub fn stats(&self) -> std::sync::Arc<AgentStats> {
        self.agent.stats()
    }

    /// Runs on the calling thread until `shutdown` is cancelled (`Ok`) or a fatal error.
    pub fn run_until(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(AgentError::Runtime)?;
        runtime.block_on(self.agent.run(shutdown))
    }
}
