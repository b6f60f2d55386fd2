//! How results are reported: one [`Line`] per measured number (printed as
//! it is measured), the ratios to the ceilings, smoke checks, and the
//! machine and versions a run ran on.

use alphadome_testkit::fixtures::nats_url;
use anyhow::bail;
use tokio::sync::Barrier;

/// One measured number.
#[derive(Clone)]
pub(crate) struct Line {
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) detail: String,
}

impl Line {
    pub(crate) fn new(
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        detail: String,
    ) -> Self {
        let l = Self {
            name: name.into(),
            value,
            unit,
            detail,
        };
        println!(
            "{:<34} {:>12.1} {:<8} {}",
            l.name, l.value, l.unit, l.detail
        );
        l
    }
}

pub(crate) fn check(smoke: bool, ok: bool, what: &str) -> anyhow::Result<()> {
    if !ok {
        if smoke {
            bail!("smoke check failed: {what}");
        }
        eprintln!("  WARNING: {what}");
    }
    Ok(())
}

/// A ceiling's name, or the name of its part in the pipeline's floor.
pub(crate) fn named(part: Option<&Barrier>, what: &str) -> String {
    match part {
        Some(_) => format!("  floor part: {what}"),
        None => format!("ceiling: {what}"),
    }
}

/// The webhooks per second an ingress would take if each cost exactly one
/// request to the bare handler and one acked publish: the two ceilings'
/// costs added (each keeps the whole machine busy on its own). The
/// ingress's distance from it is its own work (signature, JSON, tenant
/// lookup). Not a strict bound: each ceiling also carries its own load
/// generator, and the two are measured minutes apart.
pub(crate) fn http_and_publish(http: &Line, broker: &Line) -> Line {
    let value = 1.0 / (1.0 / http.value + 1.0 / broker.value);
    Line::new(
        "ceiling: HTTP request + acked publish",
        value,
        "req/s",
        format!(
            "1 / (1/{:.0} + 1/{:.0}): the bare handler's and the acked publish's costs added, \
             what an ingress doing nothing else would take",
            http.value, broker.value
        ),
    )
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024 / 1024);
    let profile = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    format!("{cores} cores ({cpu}), {mem} GiB, {profile}")
}

/// The versions of the NATS server and PostgreSQL the benchmarks run
/// against: both change the results (docs/benchmarks.md).
pub(crate) async fn services() -> anyhow::Result<String> {
    let nats = async_nats::connect(nats_url()).await?;
    let nats_version = nats.server_info().version;
    let admin = sqlx::PgPool::connect(&alphadome_testkit::fixtures::admin_database_url()).await?;
    let pg: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&admin)
        .await?;
    admin.close().await;
    Ok(format!(
        "NATS {nats_version} at {}, PostgreSQL {pg}",
        nats_url()
    ))
}
