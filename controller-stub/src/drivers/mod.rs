//! The driver manager and the common driver API, networking-sfc's `SfcDriverBase` and
//! `FlowClassifierDriverBase` in one trait.
//!
//! A driver is an [`SfcDriver`]: for each resource (port pair, port pair group, flow
//! classifier, port chain, service graph) it has `create_*_precommit`/`_postcommit`,
//! `update_*_precommit`/`_postcommit`, `delete_*` (called before the delete transaction),
//! `delete_*_precommit` and `delete_*_postcommit`. Every method has a default body that hands
//! the call to [`SfcDriver::on_hook`], itself a no-op by default, so a driver overrides only
//! what it needs and an observer (the `logging` driver, the tests' failing driver) can watch
//! every hook through one method.
//!
//! The API calls the hooks in networking-sfc's order (`services/sfc/plugin.py`):
//! - create: one transaction {insert; `create_*_precommit`}, then `create_*_postcommit`; when
//!   the postcommit fails the resource is deleted again through the normal delete path (hooks
//!   included) and the caller gets the 500.
//! - update: one transaction {update; `update_*_precommit`}, then `update_*_postcommit`; a
//!   postcommit failure is a 500 but the update stays, as in networking-sfc.
//! - delete: `delete_*` first, outside any transaction; then one transaction {delete;
//!   `delete_*_precommit`}; then `delete_*_postcommit`.
//!
//! Precommit hooks get the open write transaction ([`Precommit::conn`]) so a driver can read
//! and write its own tables atomically with the resource (the OVS driver keeps its path nodes
//! there); a precommit failure rolls the whole transaction back. Drivers run in the configured
//! order and the first failure stops the call. A failure becomes a 500 `SfcDriverError`
//! (`FlowClassifierDriverError` for flow-classifier hooks, which networking-sfc runs through a
//! separate manager), except in `create_port_chain_precommit` and
//! `create_flow_classifier_precommit`, where networking-sfc re-raises the driver's own
//! exception: there a [`DriverError::Api`] reaches the client as it is, which is how the OVS
//! drivers reject a classifier without `logical_source_port` or a symmetric chain whose
//! classifiers lack `logical_destination_port` with a 400.
//!
//! Drivers are loaded by name through a [`Registry`] (`logging` is built in); an unknown name
//! is a startup error.

pub mod logging;
pub mod ovs;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::AnyConnection;

use crate::api::sfc::{FlowClassifier, PortChain, PortPair, PortPairGroup, ServiceGraph};
use crate::auth::Context;
use crate::db::Db;
use crate::error::ApiError;

/// Why a driver refused or failed a hook.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A Neutron error the driver raises on purpose (say a 400 `SfcBadRequest`). It reaches
    /// the client unchanged from the hooks where networking-sfc re-raises the original
    /// exception; elsewhere it is a driver failure like any other.
    #[error(transparent)]
    Api(ApiError),
    /// The driver's own database work failed.
    #[error("database error")]
    Db(#[from] sqlx::Error),
    /// Anything else: an unreachable agent, an impossible path.
    #[error("{0}")]
    Failed(String),
}

/// A stored SFC resource as the drivers see it.
pub trait SfcResource: Send + Sync + 'static {
    const KIND: ResourceKind;
    fn id(&self) -> &str;
    /// The API representation (what networking-sfc drivers get as `context.current`).
    fn to_json(&self) -> Value;
}

/// The five resources of the SFC API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    PortPair,
    PortPairGroup,
    FlowClassifier,
    PortChain,
    ServiceGraph,
}

impl ResourceKind {
    /// The singular name, as in the hook names (`create_port_pair_precommit`).
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::PortPair => "port_pair",
            ResourceKind::PortPairGroup => "port_pair_group",
            ResourceKind::FlowClassifier => "flow_classifier",
            ResourceKind::PortChain => "port_chain",
            ResourceKind::ServiceGraph => "service_graph",
        }
    }

    /// The 500 a failing driver gives: networking-sfc's flow classifiers have their own
    /// driver manager and exception.
    fn driver_error_kind(self) -> &'static str {
        match self {
            ResourceKind::FlowClassifier => "FlowClassifierDriverError",
            _ => "SfcDriverError",
        }
    }
}

/// One of the seven hooks of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    CreatePrecommit,
    CreatePostcommit,
    UpdatePrecommit,
    UpdatePostcommit,
    /// `delete_*`: before the delete transaction.
    Delete,
    DeletePrecommit,
    DeletePostcommit,
}

/// A hook of one resource: displays as the driver method's name, e.g.
/// `create_port_chain_precommit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HookName {
    pub hook: Hook,
    pub kind: ResourceKind,
}

impl fmt::Display for HookName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (op, suffix) = match self.hook {
            Hook::CreatePrecommit => ("create", "_precommit"),
            Hook::CreatePostcommit => ("create", "_postcommit"),
            Hook::UpdatePrecommit => ("update", "_precommit"),
            Hook::UpdatePostcommit => ("update", "_postcommit"),
            Hook::Delete => ("delete", ""),
            Hook::DeletePrecommit => ("delete", "_precommit"),
            Hook::DeletePostcommit => ("delete", "_postcommit"),
        };
        write!(f, "{op}_{}{suffix}", self.kind.name())
    }
}

/// What a precommit hook gets: the resource, its state before an update, the caller, and the
/// open write transaction (commit happens after every driver's precommit succeeded).
#[derive(Debug)]
pub struct Precommit<'a, R> {
    pub current: &'a R,
    pub original: Option<&'a R>,
    pub caller: &'a Context,
    pub conn: &'a mut AnyConnection,
}

/// What the hooks outside the transaction get (`*_postcommit`, `delete_*`): the committed
/// resource, its state before an update, the caller and the database for reads or writes of
/// the driver's own.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a, R> {
    pub current: &'a R,
    pub original: Option<&'a R>,
    pub caller: &'a Context,
    pub db: &'a Db,
}

/// Any hook, rendered, for drivers that watch all of them through [`SfcDriver::on_hook`].
#[derive(Debug, Clone)]
pub struct HookCall {
    pub name: HookName,
    pub id: String,
    pub current: Value,
    pub original: Option<Value>,
}

impl HookCall {
    /// The call of `hook` on `current` (and, for updates, `original`).
    pub fn new<R: SfcResource>(hook: Hook, current: &R, original: Option<&R>) -> Self {
        HookCall {
            name: HookName {
                hook,
                kind: R::KIND,
            },
            id: current.id().to_string(),
            current: current.to_json(),
            original: original.map(SfcResource::to_json),
        }
    }
}

type HookResult = Result<(), DriverError>;

/// A port-chain driver (networking-sfc's `SfcDriverBase` plus `FlowClassifierDriverBase`).
///
/// Every hook defaults to [`SfcDriver::on_hook`], which defaults to doing nothing.
#[async_trait]
pub trait SfcDriver: Send + Sync + fmt::Debug {
    /// The name it is configured by.
    fn name(&self) -> &str;

    /// Called by every hook this driver does not override.
    async fn on_hook(&self, _call: HookCall) -> HookResult {
        Ok(())
    }

    // Port pairs.
    async fn create_port_pair_precommit(&self, ctx: &mut Precommit<'_, PortPair>) -> HookResult {
        self.on_hook(HookCall::new(Hook::CreatePrecommit, ctx.current, None))
            .await
    }
    async fn create_port_pair_postcommit(&self, ctx: &Event<'_, PortPair>) -> HookResult {
        self.on_hook(HookCall::new(Hook::CreatePostcommit, ctx.current, None))
            .await
    }
    async fn update_port_pair_precommit(&self, ctx: &mut Precommit<'_, PortPair>) -> HookResult {
        self.on_hook(HookCall::new(
            Hook::UpdatePrecommit,
            ctx.current,
            ctx.original,
        ))
        .await
    }
    async fn update_port_pair_postcommit(&self, ctx: &Event<'_, PortPair>) -> HookResult {
        self.on_hook(HookCall::new(
            Hook::UpdatePostcommit,
            ctx.current,
            ctx.original,
        ))
        .await
    }
    async fn delete_port_pair(&self, ctx: &Event<'_, PortPair>) -> HookResult {
        self.on_hook(HookCall::new(Hook::Delete, ctx.current, None))
            .await
    }
    async fn delete_port_pair_precommit(&self, ctx: &mut Precommit<'_, PortPair>) -> HookResult {
        self.on_hook(HookCall::new(Hook::DeletePrecommit, ctx.current, None))
            .await
    }
    async fn delete_port_pair_postcommit(&self, ctx: &Event<'_, PortPair>) -> HookResult {
        self.on_hook(HookCall::new(Hook::DeletePostcommit, ctx.current, None))
            .await
    }

    // Port pair groups.
    async fn create_port_pair_group_precommit(
        &self,
        ctx: &mut Precommit<'_, PortPairGroup>,
    ) -> HookResult {
        self.on_hook(HookCall::new(Hook::CreatePrecommit, ctx.current, None))
            .await
    }
    async fn create_port_pair_group_postcommit(
        &self,
        ctx: &Event<'_, PortPairGroup>,
    ) -> HookResult {
        self.on_hook(HookCall::new(Hook::CreatePostcommit, ctx.current, None))
            .await
    }
    async fn update_port_pair_group_precommit(
        &self,
        ctx: &mut Precommit<'_, PortPairGroup>,
    ) -> HookResult {
        self.on_hook(HookCall::new(
            Hook::UpdatePrecommit,
            ctx.current,
            ctx.original,
        ))
        .await
    }
    async fn update_port_pair_group_postcommit(
        &self,
        ctx: &Event<'_, PortPairGroup>,
    ) -> HookResult {
        self.on_hook(HookCall::new(
            Hook::UpdatePostcommit,
            ctx.current,
            ctx.original,
        ))
        .await
    }
    async fn delete_port_pair_group(&self, ctx: &Event<'_, PortPairGroup>) -> HookResult {
        self.on_hook(HookCall::new(Hook::Delete, ctx.current, None))
            .await
    }
    async fn delete_port_pair_group_precommit(
        &self,
        ctx: &mut Precommit<'_, PortPairGroup>,
    ) -> HookResult {
        self.on_hook(HookCall::new(Hook::DeletePrecommit, ctx.current, None))
            .await
    }
    async fn delete_port_pair_group_postcommit(
        &self,
        ctx: &Event<'_, PortPairGroup>,
    ) -> HookResult {
        self.on_hook(HookCall::new(Hook::DeletePostcommit, ctx.current, None))
            .await
    }

    // Flow classifiers.
    async fn create_flow_classifier_precommit(
        &self,
        ctx: &mut Precommit<'_, FlowClassifier>,
    ) -> HookResult {
        self.on_hook(HookCall::new(Hook::CreatePrecommit, ctx.current, None))
            .await
    }
    async fn create_flow_classifier_postcommit(
        &self,
        ctx: &Event<'_, FlowClassifier>,
    ) -> HookResult {
        self.on_hook(HookCall::new(Hook::CreatePostcommit, ctx.current, None))
            .await
    }
    async fn update_flow_classifier_precommit(
        &self,
        ctx: &mut Precommit<'_, FlowClassifier>,
    ) -> HookResult {
        self.on_hook(HookCall::new(
            Hook::UpdatePrecommit,
            ctx.current,
            ctx.original,
        ))
        .await
    }
    async fn update_flow_classifier_postcommit(
        &self,
        ctx: &Event<'_, FlowClassifier>,
    ) -> HookResult {
        self.on_hook(HookCall::new(
            Hook::UpdatePostcommit,
            ctx.current,
            ctx.original,
        ))
        .await
    }
    async fn delete_flow_classifier(&self, ctx: &Event<'_, FlowClassifier>) -> HookResult {
        self.on_hook(HookCall::new(Hook::Delete, ctx.current, None))
            .await
    }
    async fn delete_flow_classifier_precommit(
        &self,
        ctx: &mut Precommit<'_, FlowClassifier>,
    ) -> HookResult {
        self.on_hook(HookCall::new(Hook::DeletePrecommit, ctx.current, None))
            .await
    }
    async fn delete_flow_classifier_postcommit(
        &self,
        ctx: &Event<'_, FlowClassifier>,
    ) -> HookResult {
        self.on_hook(HookCall::new(Hook::DeletePostcommit, ctx.current, None))
            .await
    }

    // Port chains.
    async fn create_port_chain_precommit(&self, ctx: &mut Precommit<'_, PortChain>) -> HookResult {
        self.on_hook(HookCall::new(Hook::CreatePrecommit, ctx.current, None))
            .await
    }
    async fn create_port_chain_postcommit(&self, ctx: &Event<'_, PortChain>) -> HookResult {
        self.on_hook(HookCall::new(Hook::CreatePostcommit, ctx.current, None))
            .await
    }
    /// The create postcommits of one bulk request, in request order. By default
    /// `create_port_chain_postcommit` for each in turn, up to the first failure; a driver
    /// that can do the work of many chains at once overrides it.
    async fn create_port_chains_postcommit(&self, ctxs: &[Event<'_, PortChain>]) -> HookResult {
        for ctx in ctxs {
            self.create_port_chain_postcommit(ctx).await?;
        }
        Ok(())
    }
    async fn update_port_chain_precommit(&self, ctx: &mut Precommit<'_, PortChain>) -> HookResult {
        self.on_hook(HookCall::new(
            Hook::UpdatePrecommit,
            ctx.current,
            ctx.original,
        ))
        .await
    }
    async fn update_port_chain_postcommit(&self, ctx: &Event<'_, PortChain>) -> HookResult {
        self.on_hook(HookCall::new(
            Hook::UpdatePostcommit,
            ctx.current,
            ctx.original,
        ))
        .await
    }
    async fn delete_port_chain(&self, ctx: &Event<'_, PortChain>) -> HookResult {
        self.on_hook(HookCall::new(Hook::Delete, ctx.current, None))
            .await
    }
    async fn delete_port_chain_precommit(&self, ctx: &mut Precommit<'_, PortChain>) -> HookResult {
        self.on_hook(HookCall::new(Hook::DeletePrecommit, ctx.current, None))
            .await
    }
    async fn delete_port_chain_postcommit(&self, ctx: &Event<'_, PortChain>) -> HookResult {
        self.on_hook(HookCall::new(Hook::DeletePostcommit, ctx.current, None))
            .await
    }

    // Service graphs.
    async fn create_service_graph_precommit(
        &self,
        ctx: &mut Precommit<'_, ServiceGraph>,
    ) -> HookResult {
        self.on_hook(HookCall::new(Hook::CreatePrecommit, ctx.current, None))
            .await
    }
    async fn create_service_graph_postcommit(&self, ctx: &Event<'_, ServiceGraph>) -> HookResult {
        self.on_hook(HookCall::new(Hook::CreatePostcommit, ctx.current, None))
            .await
    }
    async fn update_service_graph_precommit(
        &self,
        ctx: &mut Precommit<'_, ServiceGraph>,
    ) -> HookResult {
        self.on_hook(HookCall::new(
            Hook::UpdatePrecommit,
            ctx.current,
            ctx.original,
        ))
        .await
    }
    async fn update_service_graph_postcommit(&self, ctx: &Event<'_, ServiceGraph>) -> HookResult {
        self.on_hook(HookCall::new(
            Hook::UpdatePostcommit,
            ctx.current,
            ctx.original,
        ))
        .await
    }
    async fn delete_service_graph(&self, ctx: &Event<'_, ServiceGraph>) -> HookResult {
        self.on_hook(HookCall::new(Hook::Delete, ctx.current, None))
            .await
    }
    async fn delete_service_graph_precommit(
        &self,
        ctx: &mut Precommit<'_, ServiceGraph>,
    ) -> HookResult {
        self.on_hook(HookCall::new(Hook::DeletePrecommit, ctx.current, None))
            .await
    }
    async fn delete_service_graph_postcommit(&self, ctx: &Event<'_, ServiceGraph>) -> HookResult {
        self.on_hook(HookCall::new(Hook::DeletePostcommit, ctx.current, None))
            .await
    }
}

/// The precommit hooks, which run inside the write transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxHook {
    Create,
    Update,
    Delete,
}

/// The hooks outside the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventHook {
    CreatePostcommit,
    UpdatePostcommit,
    /// `delete_*`, before the delete transaction.
    Delete,
    DeletePostcommit,
}

impl From<TxHook> for Hook {
    fn from(h: TxHook) -> Hook {
        match h {
            TxHook::Create => Hook::CreatePrecommit,
            TxHook::Update => Hook::UpdatePrecommit,
            TxHook::Delete => Hook::DeletePrecommit,
        }
    }
}

impl From<EventHook> for Hook {
    fn from(h: EventHook) -> Hook {
        match h {
            EventHook::CreatePostcommit => Hook::CreatePostcommit,
            EventHook::UpdatePostcommit => Hook::UpdatePostcommit,
            EventHook::Delete => Hook::Delete,
            EventHook::DeletePostcommit => Hook::DeletePostcommit,
        }
    }
}

/// Routes a hook of resource type `R` to the driver method of that name.
#[async_trait]
pub trait Dispatch: SfcResource + Sized {
    async fn precommit(
        driver: &dyn SfcDriver,
        hook: TxHook,
        ctx: &mut Precommit<'_, Self>,
    ) -> HookResult;
    async fn event(driver: &dyn SfcDriver, hook: EventHook, ctx: &Event<'_, Self>) -> HookResult;
    /// The create postcommits of one bulk request; by default one by one.
    async fn create_postcommit_all(driver: &dyn SfcDriver, ctxs: &[Event<'_, Self>]) -> HookResult {
        for ctx in ctxs {
            Self::event(driver, EventHook::CreatePostcommit, ctx).await?;
        }
        Ok(())
    }
}

macro_rules! dispatch {
    ($ty:ty, $cpre:ident, $cpost:ident, $upre:ident, $upost:ident, $del:ident, $dpre:ident, $dpost:ident) => {
        dispatch!($ty, $cpre, $cpost, $upre, $upost, $del, $dpre, $dpost, {});
    };
    ($ty:ty, $cpre:ident, $cpost:ident, $upre:ident, $upost:ident, $del:ident, $dpre:ident, $dpost:ident, bulk: $bulk:ident) => {
        dispatch!($ty, $cpre, $cpost, $upre, $upost, $del, $dpre, $dpost, {
            async fn create_postcommit_all(
                driver: &dyn SfcDriver,
                ctxs: &[Event<'_, Self>],
            ) -> HookResult {
                driver.$bulk(ctxs).await
            }
        });
    };
    ($ty:ty, $cpre:ident, $cpost:ident, $upre:ident, $upost:ident, $del:ident, $dpre:ident, $dpost:ident, { $($extra:tt)* }) => {
        #[async_trait]
        impl Dispatch for $ty {
            $($extra)*

            async fn precommit(
                driver: &dyn SfcDriver,
                hook: TxHook,
                ctx: &mut Precommit<'_, Self>,
            ) -> HookResult {
                match hook {
                    TxHook::Create => driver.$cpre(ctx).await,
                    TxHook::Update => driver.$upre(ctx).await,
                    TxHook::Delete => driver.$dpre(ctx).await,
                }
            }

            async fn event(
                driver: &dyn SfcDriver,
                hook: EventHook,
                ctx: &Event<'_, Self>,
            ) -> HookResult {
                match hook {
                    EventHook::CreatePostcommit => driver.$cpost(ctx).await,
                    EventHook::UpdatePostcommit => driver.$upost(ctx).await,
                    EventHook::Delete => driver.$del(ctx).await,
                    EventHook::DeletePostcommit => driver.$dpost(ctx).await,
                }
            }
        }
    };
}

dispatch!(
    PortPair,
    create_port_pair_precommit,
    create_port_pair_postcommit,
    update_port_pair_precommit,
    update_port_pair_postcommit,
    delete_port_pair,
    delete_port_pair_precommit,
    delete_port_pair_postcommit
);
dispatch!(
    PortPairGroup,
    create_port_pair_group_precommit,
    create_port_pair_group_postcommit,
    update_port_pair_group_precommit,
    update_port_pair_group_postcommit,
    delete_port_pair_group,
    delete_port_pair_group_precommit,
    delete_port_pair_group_postcommit
);
dispatch!(
    FlowClassifier,
    create_flow_classifier_precommit,
    create_flow_classifier_postcommit,
    update_flow_classifier_precommit,
    update_flow_classifier_postcommit,
    delete_flow_classifier,
    delete_flow_classifier_precommit,
    delete_flow_classifier_postcommit
);
dispatch!(
    PortChain,
    create_port_chain_precommit,
    create_port_chain_postcommit,
    update_port_chain_precommit,
    update_port_chain_postcommit,
    delete_port_chain,
    delete_port_chain_precommit,
    delete_port_chain_postcommit,
    bulk: create_port_chains_postcommit
);
dispatch!(
    ServiceGraph,
    create_service_graph_precommit,
    create_service_graph_postcommit,
    update_service_graph_precommit,
    update_service_graph_postcommit,
    delete_service_graph,
    delete_service_graph_precommit,
    delete_service_graph_postcommit
);

/// The configured drivers, called in order (`Default`: none at all).
#[derive(Debug, Clone, Default)]
pub struct DriverManager {
    drivers: Arc<Vec<Arc<dyn SfcDriver>>>,
}

impl DriverManager {
    /// A manager over these drivers, in this order (tests build theirs this way).
    pub fn new(drivers: Vec<Arc<dyn SfcDriver>>) -> Self {
        DriverManager {
            drivers: Arc::new(drivers),
        }
    }

    /// The drivers named in configuration, from `registry`, in the configured order.
    pub fn from_names<S: AsRef<str>>(
        names: &[S],
        registry: &Registry,
    ) -> Result<Self, UnknownDriver> {
        let drivers = names
            .iter()
            .map(|n| registry.build(n.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(
            drivers = ?drivers.iter().map(|d| d.name().to_string()).collect::<Vec<_>>(),
            "loaded SFC drivers"
        );
        Ok(Self::new(drivers))
    }

    pub fn names(&self) -> Vec<String> {
        self.drivers.iter().map(|d| d.name().to_string()).collect()
    }

    /// Runs a precommit hook on every driver inside the caller's transaction.
    pub async fn precommit<R: Dispatch>(
        &self,
        hook: TxHook,
        ctx: &mut Precommit<'_, R>,
    ) -> Result<(), ApiError> {
        for driver in self.drivers.iter() {
            if let Err(e) = R::precommit(driver.as_ref(), hook, ctx).await {
                // networking-sfc passes `raise_orig_exc=True` for exactly these two.
                let reraise = hook == TxHook::Create
                    && matches!(
                        R::KIND,
                        ResourceKind::PortChain | ResourceKind::FlowClassifier
                    );
                return Err(self.failure(driver.as_ref(), hook.into(), R::KIND, e, reraise));
            }
        }
        Ok(())
    }

    /// Runs a hook outside the transaction on every driver.
    pub async fn event<R: Dispatch>(
        &self,
        hook: EventHook,
        ctx: &Event<'_, R>,
    ) -> Result<(), ApiError> {
        for driver in self.drivers.iter() {
            if let Err(e) = R::event(driver.as_ref(), hook, ctx).await {
                return Err(self.failure(driver.as_ref(), hook.into(), R::KIND, e, false));
            }
        }
        Ok(())
    }

    /// The create postcommits of one bulk request, driver by driver.
    pub async fn create_postcommit_all<R: Dispatch>(
        &self,
        ctxs: &[Event<'_, R>],
    ) -> Result<(), ApiError> {
        for driver in self.drivers.iter() {
            if let Err(e) = R::create_postcommit_all(driver.as_ref(), ctxs).await {
                return Err(self.failure(
                    driver.as_ref(),
                    Hook::CreatePostcommit,
                    R::KIND,
                    e,
                    false,
                ));
            }
        }
        Ok(())
    }

    fn failure(
        &self,
        driver: &dyn SfcDriver,
        hook: Hook,
        kind: ResourceKind,
        error: DriverError,
        reraise: bool,
    ) -> ApiError {
        let method = HookName { hook, kind };
        tracing::error!(
            driver = driver.name(),
            %method,
            error = %crate::error_chain(&error),
            "SFC driver failed"
        );
        match error {
            DriverError::Api(e) if reraise => e,
            _ => ApiError::internal(kind.driver_error_kind(), format!("{method} failed.")),
        }
    }
}

/// A driver name no registry entry has.
#[derive(Debug, thiserror::Error)]
#[error("unknown SFC driver {name:?} (available: {available})")]
pub struct UnknownDriver {
    pub name: String,
    pub available: String,
}

type Constructor = Box<dyn Fn() -> Arc<dyn SfcDriver> + Send + Sync>;

/// Driver constructors by configured name (stevedore's entry points in networking-sfc).
pub struct Registry {
    constructors: BTreeMap<String, Constructor>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("drivers", &self.constructors.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Registry {
    /// The drivers built into the controller.
    fn default() -> Self {
        let mut r = Registry::empty();
        r.register(logging::NAME, || Arc::new(logging::LoggingDriver));
        r
    }
}

impl Registry {
    pub fn empty() -> Self {
        Registry {
            constructors: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the driver called `name`.
    pub fn register(
        &mut self,
        name: &str,
        constructor: impl Fn() -> Arc<dyn SfcDriver> + Send + Sync + 'static,
    ) {
        self.constructors
            .insert(name.to_string(), Box::new(constructor));
    }

    pub fn names(&self) -> Vec<&str> {
        self.constructors.keys().map(String::as_str).collect()
    }

    fn build(&self, name: &str) -> Result<Arc<dyn SfcDriver>, UnknownDriver> {
        self.constructors
            .get(name)
            .map(|c| c())
            .ok_or_else(|| UnknownDriver {
                name: name.to_string(),
                available: self.names().join(", "),
            })
    }
}

impl DriverManager {
    /// What a controller runs when configuration names no driver: `logging` (networking-sfc's
    /// default is its no-op `dummy`).
    pub fn default_drivers() -> Self {
        DriverManager::new(vec![Arc::new(logging::LoggingDriver)])
    }
}
