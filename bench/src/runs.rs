//! The benchmarks of the platform itself: the ingress alone, the whole
//! pipeline at a rate or as fast as it goes, the logger alone, memory with
//! many tenants, and the noisy neighbour.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alphadome_core::bus::{Bus, StreamKind};
use alphadome_core::events::v1::{Direction, LogEvent};
use alphadome_core::events::Message as _;
use alphadome_testkit::fixtures::nats_url;
use alphadome_testkit::graph::GraphStandIn;
use alphadome_testkit::load::{self, Pace, Percentiles};
use tokio_util::sync::CancellationToken;

use crate::env::{graph_on_own_thread, run_id, sample_rss, start, wait_for_logs, Env};
use crate::report::{check, Line};

pub(crate) async fn ingress(
    smoke: bool,
    messages: usize,
    connections: usize,
    tenants: usize,
) -> anyhow::Result<Line> {
    let env = Env::new().await;
    let tenants = env.tenants(tenants, 0).await?;
    let (_graph, graph_url, _stop) = GraphStandIn::start_local().await?;
    let p = start(&["run", "ingress"], env.env(&graph_url)).await?;
    let run = run_id();
    let shots = Arc::new(load::text_shots(&run, &tenants, 1000, messages));
    let sent = load::send(
        p.addr,
        "/webhook",
        shots,
        Pace {
            rate: None,
            connections,
        },
    )
    .await;
    let bus = Bus::connect(&nats_url(), &env.nats.prefix).await?;
    let stored = bus
        .js
        .get_stream(bus.stream_name(StreamKind::Inbound))
        .await?
        .info()
        .await?
        .state
        .messages;
    check(
        smoke,
        sent.accepted() == messages,
        &format!(
            "ingress accepted {} of {messages}: {:?}",
            sent.accepted(),
            sent.errors
        ),
    )?;
    check(
        smoke,
        stored as usize == messages,
        &format!("{stored} of {messages} messages are in the stream"),
    )?;
    let rss = p.rss_kib().map(|(_, peak)| peak / 1024).unwrap_or_default();
    Ok(Line::new(
        "ingress: signed webhooks, acked",
        sent.per_sec(),
        "req/s",
        format!(
            "{messages} webhooks, {} tenants, {connections} connections, {stored} stored; POST {}; peak RSS {rss} MiB",
            tenants.len(),
            Percentiles::of(&sent.post_us)
        ),
    ))
}

pub(crate) struct PipelineRun {
    pub(crate) rate: Option<f64>,
    pub(crate) messages: usize,
    pub(crate) tenants: usize,
    pub(crate) users: usize,
    pub(crate) statuses: usize,
    pub(crate) connections: usize,
    pub(crate) faq: usize,
}

pub(crate) async fn pipeline(smoke: bool, r: PipelineRun) -> anyhow::Result<Vec<Line>> {
    let env = Env::new().await;
    let tenants = Arc::new(env.tenants(r.tenants, r.faq).await?);
    let stop_graph = CancellationToken::new();
    let (graph, graph_url) = graph_on_own_thread(stop_graph.clone()).await?;
    let mut up = start(&["up"], env.env(&graph_url)).await?;
    // Warm up: every tenant answers once before the clock starts.
    let warm = run_id();
    let shots = Arc::new(load::text_shots(&warm, &tenants, r.users, tenants.len()));
    let sent = load::send(
        up.addr,
        "/webhook",
        shots,
        Pace {
            rate: None,
            connections: 16,
        },
    )
    .await;
    load::wait_for_replies(&warm, &sent, &graph, Duration::from_secs(60)).await;
    let warm_replies = load::replies(&warm, &sent, &graph);
    check(smoke, warm_replies.missing == 0, "warm-up replies missing")?;
    let logs_before = 2 * sent.accepted() as i64;

    let run = run_id();
    let shots = Arc::new(load::text_shots(&run, &tenants, r.users, r.messages));
    let statuses_stop = CancellationToken::new();
    let statuses = (r.statuses > 0).then(|| {
        tokio::spawn(load::follow_with_statuses(
            up.addr,
            graph.clone(),
            tenants.clone(),
            r.statuses,
            statuses_stop.clone(),
        ))
    });
    let rss_stop = CancellationToken::new();
    let rss = sample_rss(up.pid(), rss_stop.clone());
    let sent = load::send(
        up.addr,
        "/webhook",
        shots,
        Pace {
            rate: r.rate,
            connections: r.connections,
        },
    )
    .await;
    load::wait_for_replies(&run, &sent, &graph, Duration::from_secs(300)).await;
    let replies = load::replies(&run, &sent, &graph);
    // The log rows: both directions of every accepted message.
    let want = logs_before + 2 * sent.accepted() as i64;
    let log_bus = Bus::connect(&nats_url(), &env.nats.prefix).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let logged = wait_for_logs(&env.db.pool, &log_bus, want, deadline).await?;
    let logs_done = Instant::now();
    statuses_stop.cancel();
    let status_counts = match statuses {
        Some(t) => Some(t.await?),
        None => None,
    };
    rss_stop.cancel();
    let peak_rss = rss.await?.max(up.rss_kib().map(|(_, p)| p).unwrap_or(0));
    up.terminate(Duration::from_secs(20));
    stop_graph.cancel();

    let accepted = sent.accepted();
    check(
        smoke,
        accepted == r.messages,
        &format!(
            "ingress accepted {accepted} of {}: {:?}",
            r.messages, sent.errors
        ),
    )?;
    check(
        smoke,
        replies.missing == 0,
        &format!("{} replies missing", replies.missing),
    )?;
    check(
        smoke,
        replies.duplicated == 0,
        &format!("{} replies doubled", replies.duplicated),
    )?;
    check(
        smoke,
        logged >= want,
        &format!("{} of {want} log rows written", logged),
    )?;
    let label = match r.rate {
        Some(rate) => format!("pipeline @ {rate:.0} msg/s"),
        None => "pipeline, as fast as it goes".to_owned(),
    };
    let delivered_secs = replies
        .last
        .map_or(f64::NAN, |l| (l - sent.started).as_secs_f64());
    let logged_secs = (logs_done - sent.started).as_secs_f64();
    let mut detail = format!(
        "{} msgs, {} tenants x {} users; sent {}, accepted {accepted}, replied {}, missing {}, duplicated {}, log rows {}/{}; \
         replies done in {delivered_secs:.2} s, logs in {logged_secs:.2} s; webhook->reply {}; peak RSS {} MiB",
        r.messages,
        r.tenants,
        r.users,
        sent.status.len(),
        replies.replied,
        replies.missing,
        replies.duplicated,
        logged - logs_before,
        want - logs_before,
        Percentiles::of(&replies.latency_us),
        peak_rss / 1024,
    );
    if let Some((n, refused)) = status_counts {
        detail.push_str(&format!("; {n} status webhooks ({refused} refused)"));
    }
    let mut lines = vec![Line::new(
        format!("{label}: sustained"),
        accepted as f64 / logged_secs,
        "msg/s",
        detail,
    )];
    let p = Percentiles::of(&replies.latency_us);
    let slowest = replies
        .slowest_seconds(3)
        .iter()
        .map(|(sec, us)| format!("{:.1} ms in second {sec}", *us as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(", ");
    lines.push(Line::new(
        format!("{label}: p99 webhook->reply"),
        p.p99,
        "ms",
        format!(
            "p50 {:.2} ms, p99.9 {:.2} ms; slowest seconds: {slowest}",
            p.p50, p.p999
        ),
    ));
    Ok(lines)
}

pub(crate) async fn logger(smoke: bool, rows: usize) -> anyhow::Result<Line> {
    let env = Env::new().await;
    let tenants = env.tenants(10, 0).await?;
    let bus = Bus::connect(&nats_url(), &env.nats.prefix).await?;
    bus.ensure_streams(Duration::from_secs(120)).await?;
    // The log stream is filled first; then the logger drains it.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tenants = Arc::new(tenants);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (bus, next, tenants) = (bus.clone(), next.clone(), tenants.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= rows {
                    return Ok::<(), alphadome_core::bus::BusError>(());
                }
                let t = &tenants[i % tenants.len()];
                let incoming = i % 2 == 0;
                let ev = LogEvent {
                    tenant_id: t.id.to_string(),
                    direction: if incoming {
                        Direction::Incoming
                    } else {
                        Direction::Outgoing
                    } as i32,
                    dedup_key: format!(
                        "{}:wamid.log.{}",
                        if incoming { "in" } else { "out" },
                        i / 2
                    ),
                    wamid: format!("wamid.log.{i}"),
                    user_phone: format!("2547{:08}", (i / 2) % 1000),
                    message_text: load::customer_text(i),
                    metadata_json: r#"{"reason":"faq_match","match_score":0.82}"#.into(),
                    occurred_at_ms: alphadome_core::events::now_ms(),
                    raw_json: if incoming {
                        format!(
                            r#"{{"from":"2547{:08}","id":"wamid.log.{i}","type":"text"}}"#,
                            (i / 2) % 1000
                        )
                    } else {
                        String::new()
                    },
                    ..Default::default()
                };
                let id = ev.dedup_key.clone();
                bus.publish(
                    bus.subject(StreamKind::Log, &ev.tenant_id),
                    &id,
                    ev.encode_to_vec().into(),
                )
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let (_graph, graph_url, _stop) = GraphStandIn::start_local().await?;
    let t0 = Instant::now();
    let p = start(&["run", "logger"], env.env(&graph_url)).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let n = wait_for_logs(&env.db.pool, &bus, rows as i64, deadline).await?;
    let secs = t0.elapsed().as_secs_f64();
    let conversations: i64 = sqlx::query_scalar("SELECT count(*) FROM public.conversations")
        .fetch_one(&env.db.pool)
        .await?;
    drop(p);
    check(
        smoke,
        n as usize == rows,
        &format!("{n} of {rows} rows written"),
    )?;
    Ok(Line::new(
        "logger: rows into bot_message_logs",
        n as f64 / secs,
        "rows/s",
        format!("{rows} events drained from JetStream in {secs:.2} s (process start included), 10 tenants; {conversations} conversations mirrored"),
    ))
}

pub(crate) async fn memory(
    smoke: bool,
    tenants: usize,
    faq: usize,
    messages: usize,
    rate: f64,
) -> anyhow::Result<Line> {
    let env = Env::new().await;
    let tenants = env.tenants(tenants, faq).await?;
    let stop_graph = CancellationToken::new();
    let (graph, graph_url) = graph_on_own_thread(stop_graph.clone()).await?;
    let up = start(&["up"], env.env(&graph_url)).await?;
    let idle = up.rss_kib().map(|(now, _)| now).unwrap_or_default();
    let stop = CancellationToken::new();
    let rss = sample_rss(up.pid(), stop.clone());
    let run = run_id();
    let shots = Arc::new(load::text_shots(&run, &tenants, 100, messages));
    let sent = load::send(
        up.addr,
        "/webhook",
        shots,
        Pace {
            rate: Some(rate),
            connections: 128,
        },
    )
    .await;
    load::wait_for_replies(&run, &sent, &graph, Duration::from_secs(300)).await;
    let replies = load::replies(&run, &sent, &graph);
    stop.cancel();
    let peak = rss.await?.max(up.rss_kib().map(|(_, p)| p).unwrap_or(0));
    check(
        smoke,
        replies.missing == 0 && replies.duplicated == 0,
        &format!(
            "{} missing, {} doubled",
            replies.missing, replies.duplicated
        ),
    )?;
    Ok(Line::new(
        "memory: peak RSS of alphadome up",
        peak as f64 / 1024.0,
        "MiB",
        format!(
            "{} tenants x {faq} FAQ entries; {messages} messages at {rate:.0}/s over all tenants, {} replied; {:.1} MiB after start",
            tenants.len(),
            replies.replied,
            idle as f64 / 1024.0
        ),
    ))
}

/// The quiet tenants' webhook-to-reply latency, alone and next to a
/// tenant flooding at `factor` times their per-tenant rate.
pub(crate) async fn neighbour(
    smoke: bool,
    rate: f64,
    factor: f64,
    quiet: usize,
    seconds: u64,
    slow_llm: Option<Duration>,
) -> anyhow::Result<Vec<Line>> {
    let env = Env::new().await;
    let quiet_tenants = env.tenants(quiet, 20).await?;
    let llm = match slow_llm {
        Some(d) => {
            let (llm, url) = alphadome_testkit::llm::LlmStandIn::start().await;
            llm.set_latency(d);
            Some((llm, url))
        }
        None => None,
    };
    let noisy = load::create_tenants_from(
        &env.db.pool,
        &env.keyring,
        quiet,
        1,
        if llm.is_some() { 0 } else { 20 },
        llm.as_ref().map(|(_, u)| u.as_str()),
        1,
    )
    .await
    .map_err(anyhow::Error::msg)?
    .remove(0);
    let stop_graph = CancellationToken::new();
    let (graph, graph_url) = graph_on_own_thread(stop_graph.clone()).await?;
    let up = start(&["up"], env.env(&graph_url)).await?;
    let quiet_rate = rate * quiet as f64;
    let n_quiet = (quiet_rate * seconds as f64) as usize;
    let n_noisy = (rate * factor * seconds as f64) as usize;
    let mut lines = Vec::new();
    for flood in [false, true] {
        let run = run_id();
        let shots = Arc::new(load::text_shots(&run, &quiet_tenants, 1000, n_quiet));
        let quiet_send = load::send(
            up.addr,
            "/webhook",
            shots,
            Pace {
                rate: Some(quiet_rate),
                connections: 32,
            },
        );
        let noisy_run = run_id();
        let (sent, noisy_sent) = if flood {
            let shots = Arc::new(load::text_shots(
                &noisy_run,
                std::slice::from_ref(&noisy),
                100_000,
                n_noisy,
            ));
            let noisy_send = load::send(
                up.addr,
                "/webhook",
                shots,
                Pace {
                    rate: Some(rate * factor),
                    connections: 64,
                },
            );
            let (q, n) = tokio::join!(quiet_send, noisy_send);
            (q, Some(n))
        } else {
            (quiet_send.await, None)
        };
        load::wait_for_replies(&run, &sent, &graph, Duration::from_secs(300)).await;
        let r = load::replies(&run, &sent, &graph);
        let p = Percentiles::of(&r.latency_us);
        let mut detail = format!(
            "{} quiet tenants at {rate:.0} msg/s each: {}; missing {}, duplicated {}",
            quiet_tenants.len(),
            p,
            r.missing,
            r.duplicated
        );
        if let Some(ns) = noisy_sent {
            load::wait_for_replies(&noisy_run, &ns, &graph, Duration::from_secs(300)).await;
            let nr = load::replies(&noisy_run, &ns, &graph);
            detail.push_str(&format!(
                "; the noisy tenant at {:.0} msg/s{}: {} accepted, {} replied, {}",
                rate * factor,
                slow_llm.map_or(String::new(), |d| format!(" to an LLM taking {d:?}")),
                ns.accepted(),
                nr.replied,
                Percentiles::of(&nr.latency_us)
            ));
        }
        check(
            smoke,
            r.missing == 0 && r.duplicated == 0,
            "quiet tenants' replies missing or doubled",
        )?;
        lines.push(Line::new(
            if flood {
                "neighbour: quiet p99, one tenant flooding"
            } else {
                "neighbour: quiet p99, no flood"
            },
            p.p99,
            "ms",
            detail,
        ));
    }
    drop(up);
    stop_graph.cancel();
    Ok(lines)
}
