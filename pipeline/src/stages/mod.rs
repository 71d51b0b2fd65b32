//! The long-running stages: each runs alone (`locus bridge`, ...) to scale on its own, or
//! together (`locus run`) on a laptop or a small site. Every process gets the same runtime:
//! one HTTP server (/metrics, /healthz, /readyz), graceful shutdown on SIGTERM.
//!
//! **The stage contract.** A stage is one file here with
//! `pub fn build(config: &Config, ctx: StageContext) -> anyhow::Result<StageParts>`: from its
//! config section it returns its runner (a future that ends when `ctx.cancel` is cancelled,
//! having flushed and committed what is done), its readiness checks and its HTTP routes (data
//! routes behind [`data_auth`]). `run` is the list of them; nothing else is wired by hand.

mod bridge;
mod cache;
mod history;
mod push;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use locus_kafka::Backoff;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime::http::{CheckFn, Limits, Readiness, base_router, bind, serve};
use crate::runtime::shutdown;

/// Routes whose responses are long-lived streams (see `runtime::streaming`).
const STREAMING_PATHS: &[&str] = &[locus_sse::STREAM_PATH];

/// The stages this binary can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Bridge,
    History,
    Cache,
    Push,
}

impl Stage {
    pub const ALL: &'static [Stage] = &[Stage::Bridge, Stage::History, Stage::Cache, Stage::Push];

    fn name(self) -> &'static str {
        match self {
            Stage::Bridge => "bridge",
            Stage::History => "history",
            Stage::Cache => "cache",
            Stage::Push => "push",
        }
    }
}

/// What every stage gets from the runtime.
#[derive(Debug, Clone)]
pub struct StageContext {
    /// Cancelled at shutdown: the runner stops reading, finishes what it holds, and returns.
    pub cancel: CancellationToken,
    /// How long a stage has to drain after `cancel`.
    pub grace: Duration,
    /// The groups tokens may name (one directory per process, followed by `run`).
    pub groups: Arc<locus_sse::groups::Groups>,
}

/// The runner of a stage.
pub type Runner = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// What a stage gives the runtime.
pub struct StageParts {
    /// Runs until the stage's token is cancelled; an error (or an early end) stops the process.
    pub runner: Runner,
    /// Named checks behind `/readyz`.
    pub checks: Vec<(&'static str, CheckFn)>,
    /// Its HTTP routes on `http.listen`.
    pub routes: axum::Router,
}

impl StageParts {
    pub fn new(runner: impl Future<Output = anyhow::Result<()>> + Send + 'static) -> StageParts {
        StageParts {
            runner: Box::pin(runner),
            checks: vec![],
            routes: axum::Router::new(),
        }
    }

    /// Adds a readiness check; its error, shown by `/readyz`, says why it is not ready.
    pub fn check<F, Fut, E>(mut self, name: &'static str, check: F) -> StageParts
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let check = Arc::new(check);
        self.checks.push((
            name,
            Arc::new(move || {
                let check = check.clone();
                Box::pin(async move { check().await.map_err(|e| e.to_string()) }) as _
            }),
        ));
        self
    }

    /// Adds the readiness check of a store set once connected: "connecting" until `slot` is
    /// set, then whatever `ping` says.
    pub fn check_store<S, F, Fut, E>(
        self,
        name: &'static str,
        slot: Arc<std::sync::OnceLock<S>>,
        ping: F,
    ) -> StageParts
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.check(name, move || {
            let pinged = slot.get().cloned().map(&ping);
            async move {
                match pinged {
                    Some(p) => p.await.map_err(|e| e.to_string()),
                    None => Err("connecting".to_string()),
                }
            }
        })
    }

    pub fn routes(mut self, routes: axum::Router) -> StageParts {
        self.routes = self.routes.merge(routes);
        self
    }
}

/// The data routes take the same tokens as the live stream (runtime/auth.rs), groups
/// resolved with the process's directory.
pub fn data_auth(
    config: &Config,
    ctx: &StageContext,
    routes: axum::Router,
) -> anyhow::Result<axum::Router> {
    let auth = locus_sse::Authenticator::from_config(&config.push)
        .context("the data routes check tokens with the push.jwt_* keys")?
        .with_groups(ctx.groups.clone());
    Ok(crate::runtime::auth::require_token(routes, Arc::new(auth)))
}

/// The groups API (`/v1/tenants/{tenant}/groups…`), once per process that serves data.
fn groups_api(
    config: &Config,
    ctx: &StageContext,
    groups: Arc<locus_sse::groups::Groups>,
) -> anyhow::Result<axum::Router> {
    let api =
        locus_sse::groups::api::GroupsApi::new(groups, &config.kafka, config.push.groups_max_users);
    data_auth(config, ctx, locus_sse::groups::api::router(Arc::new(api)))
}

pub async fn run(config: &Config, stages: &[Stage]) -> anyhow::Result<()> {
    let cancel = shutdown::on_signal();
    let readiness = Readiness::default();
    let kafka = config.kafka.clone();
    readiness.add("kafka", move || {
        let kafka = kafka.clone();
        async move { locus_kafka::check_reachable(&kafka).await }
    });

    let grace = Duration::from_millis(config.http.shutdown_grace_ms);
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let mut router = axum::Router::new();
    // Groups: followed from the topic and managed through the API wherever data is served.
    let groups = locus_sse::groups::Groups::new(&config.topics.groups);
    if stages.iter().any(|s| *s != Stage::Bridge) {
        locus_sse::init_metrics();
        let ctx = StageContext {
            cancel: cancel.child_token(),
            grace,
            groups: groups.clone(),
        };
        router = router.merge(groups_api(config, &ctx, groups.clone())?);
        let follow = groups
            .clone()
            .follow(config.kafka.clone(), ctx.cancel.clone());
        tasks.spawn(async move {
            follow.await;
            ("groups", Ok(()))
        });
    }
    for stage in stages {
        let ctx = StageContext {
            cancel: cancel.child_token(),
            grace,
            groups: groups.clone(),
        };
        let parts = match stage {
            Stage::Bridge => bridge::build(config, ctx),
            Stage::History => history::build(config, ctx),
            Stage::Cache => cache::build(config, ctx),
            Stage::Push => push::build(config, ctx),
        }
        .with_context(|| format!("building the {} stage", stage.name()))?;
        for (name, check) in parts.checks {
            readiness.add_boxed(name, check);
        }
        router = router.merge(parts.routes);
        let (name, runner) = (stage.name(), parts.runner);
        tasks.spawn(async move { (name, runner.await) });
    }
    readiness.spawn(
        Duration::from_millis(config.http.readiness_interval_ms),
        cancel.child_token(),
    );
    let http_cancel = CancellationToken::new();
    let listen = config.http.listen;
    // Health and metrics on their own port when http.admin_listen is set.
    let (router, admin) = match config.http.admin_listen {
        Some(admin_listen) => (router, Some((admin_listen, base_router(readiness)))),
        None => (base_router(readiness).merge(router), None),
    };
    let public_listener = bind(listen, "http.listen").await?;
    let admin = match admin {
        Some((addr, admin_router)) => Some((bind(addr, "http.admin_listen").await?, admin_router)),
        None => None,
    };
    let http_stop = http_cancel.clone();
    let limits = Limits::from_config(&config.http);
    crate::runtime::metrics::init();
    let http = tokio::spawn(async move {
        let admin = async {
            match admin {
                Some((listener, admin_router)) => {
                    serve(listener, admin_router, &[], limits, http_stop.clone()).await
                }
                None => Ok(()),
            }
        };
        let public = serve(
            public_listener,
            router,
            STREAMING_PATHS,
            limits,
            http_stop.clone(),
        );
        tokio::try_join!(public, admin).map(|_| ())
    });

    let names: Vec<&str> = stages.iter().map(|s| s.name()).collect();
    tracing::info!(stages = ?names, "locus running");

    // A stage that ends on its own (an error) stops the whole process.
    let mut failure = None;
    tokio::select! {
        _ = cancel.cancelled() => {}
        Some(done) = tasks.join_next() => {
            match done {
                Ok((name, Err(e))) => failure = Some(anyhow::anyhow!("stage {name} failed: {e:#}")),
                Ok((name, Ok(()))) => failure = Some(anyhow::anyhow!("stage {name} ended unexpectedly")),
                Err(e) => failure = Some(anyhow::anyhow!("a stage panicked: {e}")),
            }
            cancel.cancel();
        }
    }
    // Drain within the grace period (each stage flushes and commits what is done), then abort.
    let drained = tokio::time::timeout(grace + Duration::from_secs(2), async {
        while let Some(done) = tasks.join_next().await {
            if let Ok((name, Err(e))) = done {
                tracing::error!(
                    stage = name,
                    error = format!("{e:#}"),
                    "stage stopped with an error"
                );
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("stages did not stop within the grace period; aborting them");
        tasks.abort_all();
    }
    http_cancel.cancel();
    match http.await {
        Ok(Err(e)) if failure.is_none() => failure = Some(e),
        _ => {}
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("locus stopped");
            Ok(())
        }
    }
}

/// Each stream is an open file: say so at start if the process cannot hold
/// `push.max_connections` of them (the OS would refuse connections before the 503 does).
fn warn_if_fd_limit_below(max_connections: usize) {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        });
    if let Some(limit) = soft
        && limit < max_connections + 256
    {
        tracing::warn!(
            open_file_limit = limit,
            max_connections,
            "the open-file limit is below push.max_connections + 256: raise it (ulimit -n, \
             LimitNOFILE) or lower push.max_connections"
        );
    }
}

/// Calls `connect` with backoff (200 ms doubling to 5 s) until it succeeds; `None` if
/// cancelled first. A stage starts even while its store is away.
pub async fn connect_until<
    T,
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
>(
    cancel: &CancellationToken,
    what: &str,
    mut connect: impl FnMut() -> F,
) -> Option<T> {
    let mut backoff = Backoff::new(Duration::from_millis(200));
    loop {
        match connect().await {
            Ok(t) => return Some(t),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.current(), "cannot reach {what} yet");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(backoff.current()) => {}
                }
                backoff.grow();
            }
        }
    }
}
