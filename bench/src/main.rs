//! `alphadome-bench`: the platform's benchmarks, each against the real
//! services (child processes of the built `alphadome` binary), the real
//! Postgres and the real NATS, with the load generator and a Graph API
//! stand-in in this process. `all` runs every benchmark and the ceilings
//! (bare HTTP handler, acknowledged JetStream publishes, COPY, the
//! database's and the broker's work per message, and the pipeline's floor:
//! those three kinds of work at once) in one go, so the ratios hold on a
//! noisy machine. `--smoke` runs each one small and fails on any lost or
//! doubled reply: CI runs that.
//!
//! Build with `cargo build --release --bins` and run
//! `target/release/alphadome-bench all`; see docs/benchmarks.md.

mod ceilings;
mod env;
mod faq_eval;
mod floor;
mod report;
mod runs;

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::ceilings::{bare_http, ceiling_broker, ceiling_copy, ceiling_copy_logger, ceiling_http};
use crate::floor::{broker_traffic, ceiling_db_pipeline, ceiling_floor};
use crate::report::{http_and_publish, machine, services, Line};
use crate::runs::{ingress, logger, memory, neighbour, pipeline, PipelineRun};

#[derive(Parser)]
#[command(
    name = "alphadome-bench",
    about = "Alphadome's benchmarks (see docs/benchmarks.md)"
)]
struct Cli {
    /// Small runs that only check the benchmarks work (CI).
    #[arg(long, global = true)]
    smoke: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything below, in one run, with the ratios to the ceilings.
    All,
    /// The pipeline's floor alone: the database's work, the broker's
    /// traffic and the HTTP requests of `messages` messages, all at once.
    Floor {
        #[arg(long, default_value_t = 30_000)]
        messages: usize,
    },
    /// The ceilings: bare HTTP handler, acked JetStream publishes and the
    /// two added, COPY, the database's and the broker's work per message,
    /// the floor.
    Ceilings {
        #[arg(long, default_value_t = 100_000)]
        requests: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// Ingress alone: signed webhooks per second, each acked by JetStream.
    Ingress {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        tenants: usize,
    },
    /// The whole pipeline on the FAQ path: webhook to reply and log rows.
    Pipeline {
        /// Messages per second; omit for as fast as it goes (sustained rate).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 30_000)]
        messages: usize,
        #[arg(long, default_value_t = 100)]
        tenants: usize,
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        /// Status webhooks sent back for every reply (0 to 3).
        #[arg(long, default_value_t = 0)]
        statuses: usize,
        #[arg(long, default_value_t = 256)]
        connections: usize,
    },
    /// The logger alone: rows per second into bot_message_logs.
    Logger {
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
    },
    /// Peak RSS of `alphadome up` serving many tenants.
    Memory {
        #[arg(long, default_value_t = 1_000)]
        tenants: usize,
        #[arg(long, default_value_t = 100)]
        faq: usize,
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
    },
    /// Noisy neighbour: the quiet tenants' latency with and without one
    /// tenant flooding at `factor` times their rate.
    Neighbour {
        /// Messages per second of each quiet tenant.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        factor: f64,
        #[arg(long, default_value_t = 9)]
        quiet: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The flooding tenant's messages go to its LLM, which takes this
        /// long to answer (a slow model) instead of to its FAQ.
        #[arg(long)]
        slow_llm_ms: Option<u64>,
    },
    /// The FAQ matcher against the labelled set (bench/data/faq-eval.yaml):
    /// paraphrases answered right, out-of-scope questions refused, time per
    /// message. Needs no service.
    FaqEval {
        /// Another labelled set.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Print every question answered wrongly or not at all.
        #[arg(long)]
        show_misses: bool,
    },
    /// A bare axum handler answering 200 (the HTTP ceiling's server).
    #[command(hide = true)]
    BareHttp,
}

async fn all(smoke: bool) -> anyhow::Result<()> {
    println!(
        "# alphadome-bench all{} on {}",
        if smoke { " --smoke" } else { "" },
        machine()
    );
    let s = |full: usize, small: usize| if smoke { small } else { full };
    let http = ceiling_http(s(100_000, 500), 64, None).await?;
    let broker = ceiling_broker(s(100_000, 500), 64).await?;
    let http_publish = http_and_publish(&http, &broker);
    let copy = ceiling_copy(s(200_000, 1_000)).await?;
    let copy_logger = ceiling_copy_logger(s(200_000, 1_000)).await?;
    let db_pipeline = ceiling_db_pipeline(s(50_000, 300), None).await?;
    let traffic = broker_traffic(s(30_000, 300), None).await?;
    let floor = ceiling_floor(s(30_000, 300)).await?;
    let ingress_line = ingress(smoke, s(100_000, 500), 64, s(100, 5)).await?;
    let run = |rate: Option<f64>, messages: usize| PipelineRun {
        rate,
        messages,
        tenants: s(100, 5),
        users: s(1000, 20),
        statuses: 0,
        connections: 256,
        faq: s(20, 5),
    };
    let p1000 = pipeline(
        smoke,
        run(Some(if smoke { 200.0 } else { 1000.0 }), s(30_000, 300)),
    )
    .await?;
    let p5000 = pipeline(
        smoke,
        run(Some(if smoke { 400.0 } else { 5000.0 }), s(50_000, 300)),
    )
    .await?;
    let pmax = pipeline(smoke, run(None, s(50_000, 300))).await?;
    let pstatus = pipeline(
        smoke,
        PipelineRun {
            statuses: 3,
            ..run(Some(if smoke { 200.0 } else { 1000.0 }), s(20_000, 200))
        },
    )
    .await?;
    let logger_line = logger(smoke, s(200_000, 2_000)).await?;
    let understanding = faq_eval::run(&faq_eval::default_path(), false)?;
    let mem = memory(
        smoke,
        s(1000, 20),
        s(100, 10),
        s(10_000, 200),
        if smoke { 200.0 } else { 1000.0 },
    )
    .await?;
    let mut neighbours = neighbour(smoke, 5.0, 10.0, 9, s(20, 3) as u64, None).await?;
    neighbours.extend(
        neighbour(
            smoke,
            5.0,
            10.0,
            9,
            s(20, 3) as u64,
            Some(Duration::from_millis(s(1000, 200) as u64)),
        )
        .await?,
    );

    println!("\n| benchmark | result | ceiling | ratio |\n|---|---|---|---|");
    let row = |l: &Line, c: Option<&Line>| {
        let (ceiling, ratio) = match c {
            Some(c) => (
                format!(
                    "{:.0} {} ({})",
                    c.value,
                    c.unit,
                    c.name.trim_start_matches("ceiling: ")
                ),
                format!("{:.0} %", 100.0 * l.value / c.value),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {:.1} {} | {ceiling} | {ratio} |",
            l.name, l.value, l.unit
        );
    };
    row(&http, None);
    row(&broker, None);
    row(&http_publish, None);
    row(&copy, None);
    row(&copy_logger, None);
    row(&db_pipeline, None);
    row(&traffic, None);
    row(&floor, None);
    row(&ingress_line, Some(&http));
    row(&ingress_line, Some(&broker));
    row(&ingress_line, Some(&http_publish));
    for l in p1000.iter().chain(&p5000).chain(&pmax).chain(&pstatus) {
        if l.unit == "msg/s" {
            row(l, Some(&broker));
            row(l, Some(&db_pipeline));
            row(l, Some(&floor));
        } else {
            row(l, None);
        }
    }
    row(&logger_line, Some(&copy));
    row(&logger_line, Some(&copy_logger));
    row(&mem, None);
    for l in &understanding {
        row(l, None);
    }
    for l in &neighbours {
        row(l, None);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let smoke = cli.smoke;
    if !matches!(cli.cmd, Cmd::BareHttp | Cmd::FaqEval { .. }) {
        println!("# against {}", services().await?);
    }
    match cli.cmd {
        Cmd::BareHttp => bare_http().await?,
        Cmd::FaqEval { file, show_misses } => {
            let file = file.unwrap_or_else(faq_eval::default_path);
            faq_eval::run(&file, show_misses)?;
            match std::env::var_os("ALPHADOME_EMBEDDING_MODEL") {
                Some(dir) => {
                    faq_eval::run_semantic(&file, std::path::Path::new(&dir))?;
                }
                None => println!("\n(ALPHADOME_EMBEDDING_MODEL is not set: no semantic tier measured; scripts/setup.sh installs the model)"),
            }
        }
        Cmd::All => all(smoke).await?,
        Cmd::Floor { messages } => {
            println!("# on {}", machine());
            broker_traffic(messages, None).await?;
            ceiling_floor(messages).await?;
        }
        Cmd::Ceilings {
            requests,
            connections,
        } => {
            println!("# on {}", machine());
            let http = ceiling_http(requests, connections, None).await?;
            let broker = ceiling_broker(requests, connections).await?;
            http_and_publish(&http, &broker);
            ceiling_copy(requests).await?;
            ceiling_copy_logger(requests).await?;
            ceiling_db_pipeline(requests / 4, None).await?;
            broker_traffic(requests / 4, None).await?;
            ceiling_floor(requests / 4).await?;
        }
        Cmd::Ingress {
            messages,
            connections,
            tenants,
        } => {
            ingress(smoke, messages, connections, tenants).await?;
        }
        Cmd::Pipeline {
            rate,
            messages,
            tenants,
            users,
            statuses,
            connections,
        } => {
            pipeline(
                smoke,
                PipelineRun {
                    rate,
                    messages,
                    tenants,
                    users,
                    statuses,
                    connections,
                    faq: 20,
                },
            )
            .await?;
        }
        Cmd::Logger { rows } => {
            logger(smoke, rows).await?;
        }
        Cmd::Memory {
            tenants,
            faq,
            messages,
            rate,
        } => {
            memory(smoke, tenants, faq, messages, rate).await?;
        }
        Cmd::Neighbour {
            rate,
            factor,
            quiet,
            seconds,
            slow_llm_ms,
        } => {
            neighbour(
                smoke,
                rate,
                factor,
                quiet,
                seconds,
                slow_llm_ms.map(Duration::from_millis),
            )
            .await?;
        }
    }
    Ok(())
}
