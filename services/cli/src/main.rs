//! `alphadome`: run the platform, manage tenants, chat with a bot locally.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use alphadome_cli::simulate::{self, SimulateOptions};
use alphadome_cli::stack::{self, RunOptions, Service};
use alphadome_core::bus::Bus;
use alphadome_core::config::{self, Config};
use alphadome_core::crypto::Keyring;
use alphadome_core::manifest::{self, Manifest};
use alphadome_core::{db, telemetry, tenant, CancellationToken};
use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: the services allocate and free
/// many small buffers per message (HTTP bodies, protobuf, JSON), and glibc's
/// malloc/free took 11 % of the ingress's CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Alphadome: a multi-tenant WhatsApp Business chatbot platform.
///
/// Configuration comes from the environment: DATABASE_URL, NATS_URL,
/// ALPHADOME_MASTER_KEY, META_APP_SECRET, WHATSAPP_GRAPH_URL and others
/// (see the README).
#[derive(Parser)]
#[command(name = "alphadome", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending database migrations (a no-op when all are applied).
    Migrate,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Master key utilities.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The credential audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Messages that could not be processed (the dead-letter stream).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Conversations handed to a person.
    #[command(subcommand)]
    Conversation(ConversationCommand),
    /// Messages, AI replies and tokens per day for a tenant.
    Usage {
        /// Tenant id or client phone.
        #[arg(long)]
        tenant: String,
        /// First day to report (YYYY-MM-DD); default 30 days ago.
        #[arg(long)]
        since: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run every service in one process (migrations applied first).
    Up {
        /// Do not apply migrations at start-up.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Run one service (the scaled deployment: run as many as needed).
    Run {
        /// The service to run.
        #[arg(value_enum)]
        service: Service,
    },
    /// Chat with a tenant's bot from the terminal, without a Meta account.
    ///
    /// Sends signed webhooks to the ingress and prints the replies the
    /// platform delivers to a local Graph API stand-in. Run the platform
    /// with WHATSAPP_GRAPH_URL=http://<graph-listen>/v24.0.
    Simulate {
        /// Tenant id or client phone.
        #[arg(long)]
        tenant: String,
        /// Webhook URL of the ingress.
        #[arg(long, default_value = "http://127.0.0.1:8080/webhook")]
        ingress: String,
        /// Where the Graph API stand-in listens.
        #[arg(long, default_value = "127.0.0.1:8089")]
        graph_listen: SocketAddr,
        /// The customer's WhatsApp number.
        #[arg(long, default_value = "254711000111")]
        from: String,
        /// The customer's profile name.
        #[arg(long, default_value = "Demo Customer")]
        name: String,
        /// Message to send (repeatable); without it, lines are read from stdin.
        #[arg(long = "message", short = 'm')]
        messages: Vec<String>,
        /// Seconds to wait for each reply.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create or update a tenant from a YAML or JSON manifest (idempotent).
    Apply {
        /// The manifest file.
        #[arg(short = 'f', long = "file")]
        file: String,
    },
    /// List tenants.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant (secrets masked).
    Show {
        /// Tenant id or client phone.
        tenant: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Go live: the tenant's bot starts answering.
    Activate {
        /// Tenant id or client phone.
        tenant: String,
    },
    /// Instant rollback: the tenant's bot stops answering (messages are still logged).
    Deactivate {
        /// Tenant id or client phone.
        tenant: String,
    },
    /// Issue a new webhook verify token and print it (paste it into Meta's
    /// dashboard); the old one is still accepted during the grace period.
    RotateVerifyToken {
        /// Tenant id or client phone.
        tenant: String,
        /// Hours the previous token stays valid.
        #[arg(long, default_value_t = 24)]
        grace_hours: u64,
    },
}

#[derive(Subcommand)]
enum ConversationCommand {
    /// List conversations currently handed to a person.
    List {
        /// Tenant id or client phone.
        #[arg(long)]
        tenant: String,
    },
    /// Let the bot answer a customer again before the pause ends.
    Resume {
        /// Tenant id or client phone.
        #[arg(long)]
        tenant: String,
        /// The customer's WhatsApp number.
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random master key (base64 of 32 bytes) for ALPHADOME_MASTER_KEY.
    Generate,
    /// Re-encrypt every stored credential under ALPHADOME_MASTER_KEY.
    ///
    /// Run the services with the new key in ALPHADOME_MASTER_KEY and the old
    /// ones in ALPHADOME_PREVIOUS_MASTER_KEYS first; once this reports every
    /// credential current, the old keys can be dropped.
    Rotate,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List the dead letters with their reasons.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-drive dead letters once their cause is fixed (never sends a reply twice).
    Replay {
        /// Sequence numbers to replay (from `dlq list`); all when omitted.
        seq: Vec<u64>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the credential audit trail's hash chain; fails on an edited or deleted row.
    Verify,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn pool() -> anyhow::Result<sqlx::PgPool> {
    let url = config::database_url()?;
    db::connect(&url, 4)
        .await
        .context("cannot connect to Postgres (DATABASE_URL)")
}

/// A NATS connection for announcing tenant changes; the CLI works without
/// one (services catch up by polling within seconds).
async fn bus_if_reachable() -> Option<Bus> {
    let prefix = config::nats_prefix().ok()?;
    tokio::time::timeout(
        Duration::from_secs(2),
        Bus::connect(&config::nats_url(), &prefix),
    )
    .await
    .ok()?
    .ok()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate => {
            let pool = pool().await?;
            db::migrate(&pool).await.context("migrations failed")?;
            let applied: i64 =
                sqlx::query_scalar("SELECT count(*) FROM alphadome._sqlx_migrations WHERE success")
                    .fetch_one(&pool)
                    .await?;
            println!("migrations applied: {applied}");
        }
        Command::Tenant(cmd) => tenant_command(cmd).await?,
        Command::Keys(KeysCommand::Generate) => println!("{}", Keyring::generate_key()),
        Command::Keys(KeysCommand::Rotate) => {
            let keyring = Keyring::from_env()?;
            let pool = pool().await?;
            let report = alphadome_admin::rotate_master_key(&pool, &keyring, |done, total| {
                if done % 100 == 0 || done == total {
                    eprintln!("re-encrypted {done}/{total}");
                }
            })
            .await?;
            println!(
                "credentials: {} in all, {} re-encrypted under key {}, {} already current, {} failed",
                report.total,
                report.rotated,
                keyring.current_key_id(),
                report.current,
                report.failed.len()
            );
            if !report.failed.is_empty() {
                anyhow::bail!(
                    "{} credential(s) could not be decrypted with any configured key: {}",
                    report.failed.len(),
                    report.failed.join("; ")
                );
            }
        }
        Command::Dlq(cmd) => {
            let prefix = config::nats_prefix()?;
            let bus = Bus::connect(&config::nats_url(), &prefix).await?;
            match cmd {
                DlqCommand::List { json } => {
                    let letters = alphadome_admin::dlq::list(&bus).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&letters)?);
                    } else {
                        println!(
                            "{:>6}  {:<20}  {:<36}  {:>4}  REASON",
                            "SEQ", "FROM", "TENANT", "TRIES"
                        );
                        for l in letters {
                            println!(
                                "{:>6}  {:<20}  {:<36}  {:>4}  {}",
                                l.seq, l.source_stream, l.tenant_id, l.deliveries, l.reason
                            );
                        }
                    }
                }
                DlqCommand::Replay { seq } => {
                    let pool = pool().await?;
                    let only = (!seq.is_empty()).then_some(seq.as_slice());
                    let n = alphadome_admin::dlq::replay(&bus, &pool, only).await?;
                    println!("replayed {n} dead letter(s)");
                }
            }
        }
        Command::Audit(AuditCommand::Verify) => {
            let pool = pool().await?;
            let check = alphadome_core::audit::verify(&pool).await?;
            match check.broken {
                None => println!("credential audit trail intact: {} rows", check.rows),
                Some((id, why)) => {
                    anyhow::bail!("credential audit trail broken at row {id}: {why}")
                }
            }
        }
        Command::Conversation(cmd) => conversation_command(cmd).await?,
        Command::Usage {
            tenant,
            since,
            json,
        } => usage(&tenant, since.as_deref(), json).await?,
        Command::Up { no_migrate } => {
            let _telemetry = telemetry::init("alphadome");
            let mut opts = RunOptions::new(&Service::ALL);
            opts.migrate = !no_migrate;
            serve(opts).await?;
        }
        Command::Run { service } => {
            let name: &'static str = match service {
                Service::Ingress => "alphadome-ingress",
                Service::Responder => "alphadome-responder",
                Service::Sender => "alphadome-sender",
                Service::Logger => "alphadome-logger",
                Service::Admin => "alphadome-admin",
            };
            let _telemetry = telemetry::init(name);
            serve(RunOptions::new(&[service])).await?;
        }
        Command::Simulate {
            tenant,
            ingress,
            graph_listen,
            from,
            name,
            messages,
            timeout,
        } => {
            let pool = pool().await?;
            let keyring = Keyring::from_env()?;
            let platform = std::env::var("META_APP_SECRET")
                .ok()
                .filter(|s| !s.is_empty())
                .map(secrecy::SecretString::from);
            let from = alphadome_core::phone::normalize(
                &from,
                &alphadome_core::phone::default_country_code(),
            )
            .context("--from")?;
            simulate::run(
                &pool,
                &keyring,
                platform,
                SimulateOptions {
                    tenant,
                    ingress_url: ingress,
                    graph_listen,
                    from,
                    profile_name: name,
                    messages,
                    timeout: Duration::from_secs(timeout),
                },
            )
            .await?;
        }
    }
    Ok(())
}

async fn serve(opts: RunOptions) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (ALPHADOME_HTTP_ADDR)",
                config.http_addr
            )
        })?;
    let shutdown = CancellationToken::new();
    stack::cancel_on_signals(shutdown.clone());
    stack::run(config, opts, listener, shutdown).await
}

async fn tenant_command(cmd: TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Apply { file } => {
            let keyring = Keyring::from_env()?;
            let manifest =
                Manifest::from_file(&file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            let pool = pool().await?;
            let report = manifest::apply(&pool, &keyring, &manifest)
                .await
                .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            if let Some(bus) = bus_if_reachable().await {
                tenant::announce_change(&bus, report.tenant_id).await;
            }
            let what = if report.created {
                "created"
            } else if report.rows_changed > 0 {
                "updated"
            } else {
                "unchanged"
            };
            eprintln!("tenant {what} ({} rows changed)", report.rows_changed);
            println!("{}", report.tenant_id);
        }
        TenantCommand::List { json } => {
            let pool = pool().await?;
            let tenants = alphadome_admin::list(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tenants)?);
            } else {
                println!(
                    "{:<36}  {:<28}  {:<13}  {:<8}  {:>4}  STATUS",
                    "ID", "NAME", "PHONE", "ACTIVE", "FAQ"
                );
                for t in tenants {
                    let mut status = match (&t.degraded, t.is_bot_enabled) {
                        (Some(d), _) => format!("DEGRADED: {d}"),
                        (None, Some(false)) => "bot disabled".to_owned(),
                        _ => "ok".to_owned(),
                    };
                    if let Some(days) = t.verify_token_age_days {
                        status.push_str(&format!("; verify token {days} days old, rotate it"));
                    }
                    println!(
                        "{:<36}  {:<28}  {:<13}  {:<8}  {:>4}  {status}",
                        t.id,
                        truncate(&t.client_name, 28),
                        t.client_phone,
                        if t.is_active { "yes" } else { "no" },
                        t.faq_entries
                    );
                }
            }
        }
        TenantCommand::Show { tenant, json } => {
            let pool = pool().await?;
            let v = alphadome_admin::show(&pool, &tenant).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let value = serde_json::to_value(&v)?;
                if let Some(map) = value.as_object() {
                    for (k, val) in map {
                        let shown = match val {
                            serde_json::Value::String(s) => s.clone(),
                            serde_json::Value::Null => "(not set)".to_owned(),
                            other => other.to_string(),
                        };
                        println!("{k:<30} {shown}");
                    }
                }
            }
        }
        TenantCommand::RotateVerifyToken {
            tenant,
            grace_hours,
        } => {
            let pool = pool().await?;
            let bus = bus_if_reachable().await;
            let (id, token) = alphadome_admin::rotate_verify_token(
                &pool,
                bus.as_ref(),
                &tenant,
                Duration::from_secs(grace_hours * 3600),
            )
            .await?;
            eprintln!("new verify token for tenant {id}; the previous one is accepted for {grace_hours} h. It is shown only now:");
            println!("{token}");
        }
        TenantCommand::Activate { tenant } => set_active(&tenant, true).await?,
        TenantCommand::Deactivate { tenant } => set_active(&tenant, false).await?,
    }
    Ok(())
}

async fn set_active(tenant: &str, active: bool) -> anyhow::Result<()> {
    let pool = pool().await?;
    let bus = bus_if_reachable().await;
    let (id, changed) = alphadome_admin::set_active(&pool, bus.as_ref(), tenant, active).await?;
    let state = if active { "active" } else { "inactive" };
    if changed {
        println!("tenant {id} is now {state}");
    } else {
        println!("tenant {id} was already {state}");
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

async fn find(pool: &sqlx::PgPool, who: &str) -> anyhow::Result<tenant::Tenant> {
    tenant::find_tenant(pool, who)
        .await?
        .with_context(|| format!("no tenant with id or phone {who:?}"))
}

async fn conversation_command(cmd: ConversationCommand) -> anyhow::Result<()> {
    let pool = pool().await?;
    match cmd {
        ConversationCommand::List { tenant } => {
            let t = find(&pool, &tenant).await?;
            let rows: Vec<(String, String, String, String)> = sqlx::query_as(
                "SELECT user_phone, reason, started_at::text, paused_until::text FROM alphadome.conversation_handoffs \
                 WHERE bot_tenant_id = $1 AND resumed_at IS NULL AND paused_until > now() ORDER BY started_at",
            )
            .bind(t.id)
            .fetch_all(&pool)
            .await?;
            println!(
                "{:<16}  {:<32}  {:<30}  PAUSED UNTIL",
                "CUSTOMER", "REASON", "SINCE"
            );
            for (user, reason, since, until) in rows {
                println!("{user:<16}  {reason:<32}  {since:<30}  {until}");
            }
        }
        ConversationCommand::Resume { tenant, user } => {
            let t = find(&pool, &tenant).await?;
            let user = alphadome_core::phone::normalize(
                &user,
                &alphadome_core::phone::default_country_code(),
            )
            .context("--user")?;
            if alphadome_responder::escalation::resume(&pool, t.id, &user).await? {
                println!("the bot answers {user} again");
            } else {
                println!("no conversation with {user} is handed to a person");
            }
        }
    }
    Ok(())
}

async fn usage(tenant: &str, since: Option<&str>, json: bool) -> anyhow::Result<()> {
    let since = match since {
        Some(s) => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .with_context(|| format!("--since {s:?} is not a date (YYYY-MM-DD)"))?,
        None => (chrono::Utc::now() - chrono::Duration::days(30)).date_naive(),
    };
    let pool = pool().await?;
    let t = find(&pool, tenant).await?;
    let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT (created_at AT TIME ZONE 'UTC')::date::text AS day, \
           count(*) FILTER (WHERE direction = 'incoming'), \
           count(*) FILTER (WHERE direction = 'outgoing'), \
           count(*) FILTER (WHERE direction = 'outgoing' AND ai_processed), \
           COALESCE(sum((metadata->'usage'->>'prompt_tokens')::bigint), 0)::bigint, \
           COALESCE(sum((metadata->'usage'->>'completion_tokens')::bigint), 0)::bigint \
         FROM alphadome.bot_message_logs WHERE bot_tenant_id = $1 AND created_at >= $2::date \
         GROUP BY 1 ORDER BY 1",
    )
    .bind(t.id)
    .bind(since)
    .fetch_all(&pool)
    .await?;
    if json {
        let days: Vec<serde_json::Value> = rows
            .iter()
            .map(|(day, i, o, ai, p, c)| serde_json::json!({"day": day, "incoming": i, "outgoing": o, "ai_replies": ai, "prompt_tokens": p, "completion_tokens": c}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&days)?);
    } else {
        println!(
            "{:<10}  {:>8}  {:>8}  {:>10}  {:>13}  {:>17}",
            "DAY", "INCOMING", "OUTGOING", "AI REPLIES", "PROMPT TOKENS", "COMPLETION TOKENS"
        );
        for (day, i, o, ai, p, c) in rows {
            println!("{day:<10}  {i:>8}  {o:>8}  {ai:>10}  {p:>13}  {c:>17}");
        }
    }
    Ok(())
}
