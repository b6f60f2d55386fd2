//! The batch functions (migration 0010) do for every item what the
//! single-item functions do, under the item's own tenant: claims and
//! records, admission (handoff and limits), log rows, delivery statuses.
//! Each runs as the service role that calls it in production.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use alphadome_core::db::{self, ServiceRole};
use alphadome_tests::*;
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

async fn two_tenants(db: &TestDb, control: &str) -> (TestTenant, TestTenant) {
    let (_, ring) = keyring();
    let a = tenant(
        &db.pool,
        &ring,
        TenantSpec {
            phone: "254700000601",
            phone_number_id: "601",
            token: "EAAG-a",
            control,
            ..Default::default()
        },
    )
    .await;
    let b = tenant(
        &db.pool,
        &ring,
        TenantSpec {
            phone: "254700000602",
            phone_number_id: "602",
            token: "EAAG-b",
            control,
            ..Default::default()
        },
    )
    .await;
    (a, b)
}

async fn as_role(db: &TestDb, role: ServiceRole) -> PgPool {
    db::connect_as(&SecretString::from(db.url.clone()), role, 1)
        .await
        .unwrap()
}

type ClaimRow = (i32, bool, String, i32, Option<String>);

async fn claim(pool: &PgPool, items: &[(Uuid, &str)]) -> Vec<ClaimRow> {
    let tenants: Vec<Uuid> = items.iter().map(|i| i.0).collect();
    let ids: Vec<&str> = items.iter().map(|i| i.1).collect();
    let replies: Vec<&str> = items.iter().map(|_| "wamid.in").collect();
    sqlx::query_as("SELECT * FROM alphadome.claim_outbound_batch($1, $2, $3, 60) ORDER BY r_index")
        .bind(&tenants)
        .bind(&ids)
        .bind(&replies)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn claims_and_records_in_a_batch_act_for_each_items_own_tenant() {
    let db = TestDb::migrated().await;
    let (a, b) = two_tenants(&db, "").await;
    let sender = as_role(&db, ServiceRole::Sender).await;

    // New replies of two tenants in one batch: both claimed, each row
    // belongs to its own tenant.
    let rows = claim(&sender, &[(a.id, "reply:a1"), (b.id, "reply:b1")]).await;
    assert_eq!(
        rows,
        vec![
            (1, true, "sending".into(), 0, None),
            (2, true, "sending".into(), 0, None)
        ]
    );
    let owners: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT outbound_id, bot_tenant_id FROM alphadome.outbound_messages ORDER BY outbound_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        owners,
        vec![("reply:a1".into(), a.id), ("reply:b1".into(), b.id)]
    );

    // Claimed again while the lease runs (a redelivery in the same batch
    // too): nobody gets it twice.
    let rows = claim(
        &sender,
        &[(a.id, "reply:a1"), (a.id, "reply:a2"), (a.id, "reply:a2")],
    )
    .await;
    assert_eq!(rows.len(), 3);
    assert!(!rows[0].1, "a live claim was taken again: {rows:?}");
    assert_eq!(
        rows.iter().filter(|r| r.1).count(),
        1,
        "reply:a2 claimed twice in one batch: {rows:?}"
    );

    // Records: a's reply sent; a record naming tenant a for b's reply
    // changes nothing of b's.
    sqlx::query("SELECT alphadome.record_outbound_progress_batch($1, $2, $3, $4, $5)")
        .bind(vec![a.id, a.id])
        .bind(vec!["reply:a1", "reply:b1"])
        .bind(vec![1i32, 1])
        .bind(vec!["wamid.out.a1", "wamid.forged"])
        .bind(vec![1i32, 1])
        .execute(&sender)
        .await
        .unwrap();
    // Each update sets updated_at itself (the last column): the row has no
    // BEFORE UPDATE trigger, which would lock (and log the lock of) every
    // row it updates.
    let states: Vec<(String, String, Option<String>, bool)> = sqlx::query_as(
        "SELECT outbound_id, state, whatsapp_message_id, updated_at > created_at \
         FROM alphadome.outbound_messages \
         WHERE outbound_id IN ('reply:a1', 'reply:b1') ORDER BY outbound_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        states,
        vec![
            (
                "reply:a1".into(),
                "sent".into(),
                Some("wamid.out.a1".into()),
                true
            ),
            ("reply:b1".into(), "sending".into(), None, false)
        ]
    );
    let (triggers,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_trigger \
         WHERE tgrelid = 'alphadome.outbound_messages'::regclass AND NOT tgisinternal",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(triggers, 0, "a row trigger on outbound_messages");
    // A sent reply is never claimed again; the caller learns its wamid.
    let rows = claim(&sender, &[(a.id, "reply:a1")]).await;
    assert_eq!(
        rows,
        vec![(1, false, "sent".into(), 1, Some("wamid.out.a1".into()))]
    );
}

type AdmitRow = (i32, Option<String>, Option<String>);

async fn admit(pool: &PgPool, tenant: Uuid, items: &[(&str, &str)], per_day: i32) -> Vec<AdmitRow> {
    let tenants: Vec<Uuid> = items.iter().map(|_| tenant).collect();
    let users: Vec<&str> = items.iter().map(|i| i.0).collect();
    let wamids: Vec<&str> = items.iter().map(|i| i.1).collect();
    let per_hour: Vec<Option<i32>> = items.iter().map(|_| Some(1000)).collect();
    let per_days: Vec<Option<i32>> = items.iter().map(|_| Some(per_day)).collect();
    sqlx::query_as(
        "SELECT * FROM alphadome.admit_message_batch($1, $2, $3, $4, $5) ORDER BY r_index",
    )
    .bind(&tenants)
    .bind(&users)
    .bind(&wamids)
    .bind(&per_hour)
    .bind(&per_days)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn admission_in_a_batch_counts_each_message_once_and_honours_handoffs() {
    let db = TestDb::migrated().await;
    let (a, _b) = two_tenants(&db, "").await;
    let responder = as_role(&db, ServiceRole::Responder).await;
    sqlx::query(
        "INSERT INTO alphadome.conversation_handoffs (bot_tenant_id, user_phone, reason, paused_until, trigger_wamid) \
         VALUES ($1, '254711000003', 'asked for a person', now() + interval '1 hour', 'wamid.h')",
    )
    .bind(a.id)
    .execute(&db.pool)
    .await
    .unwrap();

    // Out of order on purpose: the function orders the work, the results
    // come back by item.
    let items = [
        ("254711000001", "wamid.3"),
        ("254711000002", "wamid.x"),
        ("254711000001", "wamid.1"),
        ("254711000001", "wamid.4"),
        ("254711000003", "wamid.later"),
        ("254711000003", "wamid.h"),
        ("254711000001", "wamid.2"),
    ];
    let decisions = |rows: &[AdmitRow]| -> Vec<(Option<String>, Option<String>)> {
        rows.iter().map(|r| (r.1.clone(), r.2.clone())).collect()
    };
    let first = admit(&responder, a.id, &items, 2).await;
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        decisions(&first),
        vec![
            (None, s("notice")),        // wamid.3: the third of the day
            (None, s("allow")),         // another customer
            (None, s("allow")),         // wamid.1
            (None, s("silent")),        // wamid.4: notice already sent
            (s("wamid.h"), None),       // in a handoff: silenced, not counted
            (s("wamid.h"), s("allow")), // the message that started it
            (None, s("allow")),         // wamid.2
        ]
    );
    // Redelivered, in another order: the same decisions, nothing counted twice.
    let mut again = items;
    again.reverse();
    let second = admit(&responder, a.id, &again, 2).await;
    let mut second = decisions(&second);
    second.reverse();
    assert_eq!(second, decisions(&first));
    let count: i32 = sqlx::query_scalar(
        "SELECT count FROM alphadome.rate_limit_counters WHERE bot_tenant_id = $1 AND scope = 'user:254711000001'",
    )
    .bind(a.id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(count, 2, "the per-day counter stops at the limit");
}

/// The tenant's hourly cap, counted by a plain update once the hour's row
/// exists (the upsert only for the first message and at the cap): exactly
/// the cap is let through, in one batch and across batches, the refused
/// message's per-user count is given back, and one notice per customer.
#[tokio::test]
async fn the_hourly_cap_lets_exactly_its_number_through() {
    let db = TestDb::migrated().await;
    let (a, _b) = two_tenants(&db, "").await;
    let responder = as_role(&db, ServiceRole::Responder).await;
    let call = |items: Vec<(&'static str, &'static str)>| {
        let responder = responder.clone();
        async move {
            let n = items.len();
            let rows: Vec<AdmitRow> = sqlx::query_as(
                "SELECT * FROM alphadome.admit_message_batch($1, $2, $3, $4, $5) ORDER BY r_index",
            )
            .bind(vec![a.id; n])
            .bind(items.iter().map(|i| i.0).collect::<Vec<_>>())
            .bind(items.iter().map(|i| i.1).collect::<Vec<_>>())
            .bind(vec![Some(3i32); n])
            .bind(vec![Some(10i32); n])
            .fetch_all(&responder)
            .await
            .unwrap();
            rows.into_iter().map(|r| r.2.unwrap()).collect::<Vec<_>>()
        }
    };
    // The first creates the hour's row, the next two update it.
    assert_eq!(
        call(vec![
            ("254711000001", "wamid.c1"),
            ("254711000002", "wamid.c2"),
            ("254711000003", "wamid.c3"),
        ])
        .await,
        ["allow", "allow", "allow"]
    );
    // At the cap: refused with one notice per customer, then silence; a
    // redelivery of an admitted message is still the same decision.
    assert_eq!(
        call(vec![
            ("254711000004", "wamid.c4"),
            ("254711000004", "wamid.c5"),
            ("254711000001", "wamid.c6"),
            ("254711000002", "wamid.c2"),
        ])
        .await,
        ["notice", "silent", "notice", "allow"]
    );
    let counts: Vec<(String, i32)> = sqlx::query_as(
        "SELECT scope, count FROM alphadome.rate_limit_counters WHERE bot_tenant_id = $1 ORDER BY scope",
    )
    .bind(a.id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        counts,
        vec![
            ("tenant".into(), 3),
            ("user:254711000001".into(), 1),
            ("user:254711000002".into(), 1),
            ("user:254711000003".into(), 1),
            // Counted for the day, then given back when the hour refused it.
            ("user:254711000004".into(), 0),
        ]
    );
}

/// One call of `write_message_logs` as `pool`, for one customer; the
/// number of new rows.
async fn write_logs(
    pool: &PgPool,
    tenants: Vec<Uuid>,
    directions: Vec<&str>,
    keys: Vec<&str>,
    wamids: Vec<&str>,
    texts: Vec<&str>,
    training: Vec<Option<Uuid>>,
) -> i32 {
    let n = tenants.len();
    sqlx::query_scalar(
        "SELECT alphadome.write_message_logs($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&tenants)
    .bind(vec![Some("254711000001"); n])
    .bind(vec![None::<Uuid>; n])
    .bind(&directions)
    .bind(&texts)
    .bind(&wamids)
    .bind(vec![false; n])
    .bind(vec![None::<String>; n])
    .bind(vec![None::<String>; n])
    .bind(vec![None::<String>; n])
    .bind(&training)
    .bind(vec![serde_json::json!({}); n])
    .bind(vec![chrono::Utc::now(); n])
    .bind(&keys)
    .bind(vec![None::<serde_json::Value>; n])
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn one_log_statement_writes_many_tenants_and_checks_what_rls_cannot() {
    let db = TestDb::migrated().await;
    let (a, b) = two_tenants(&db, "").await;
    let logger = as_role(&db, ServiceRole::Logger).await;
    let b_training: Uuid = sqlx::query_scalar(
        "SELECT id FROM alphadome.bot_training_data WHERE bot_tenant_id = $1 LIMIT 1",
    )
    .bind(b.id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let a_training: Uuid = sqlx::query_scalar(
        "SELECT id FROM alphadome.bot_training_data WHERE bot_tenant_id = $1 LIMIT 1",
    )
    .bind(a.id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let nobody = Uuid::new_v4();
    let write = || {
        write_logs(
            &logger,
            vec![a.id, b.id, nobody, a.id],
            vec!["incoming", "incoming", "incoming", "outgoing"],
            vec!["in:w.a", "in:w.b", "in:w.nobody", "out:w.a"],
            vec!["in.w.a", "in.w.b", "in.w.nobody", "out.w.a"],
            vec!["hi"; 4],
            vec![Some(a_training), None, None, Some(b_training)],
        )
    };
    assert_eq!(
        write().await,
        3,
        "the row of a tenant that does not exist is not written"
    );
    let rows: Vec<(String, Uuid, Option<Uuid>)> = sqlx::query_as(
        "SELECT dedup_key, bot_tenant_id, training_data_id FROM alphadome.bot_message_logs ORDER BY dedup_key",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("in:w.a".into(), a.id, Some(a_training)),
            ("in:w.b".into(), b.id, None),
            // Citing another tenant's training row: the citation is dropped.
            ("out:w.a".into(), a.id, None),
        ]
    );
    let mirrored: i64 = sqlx::query_scalar("SELECT count(*) FROM public.conversations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(mirrored, 3);
    // Written again (a redelivered batch): nothing new, nothing mirrored twice.
    assert_eq!(write().await, 0);
    let mirrored: i64 = sqlx::query_scalar("SELECT count(*) FROM public.conversations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(mirrored, 3);
    // A batch mixing a written row, a new one and the new one repeated
    // (the plain insert fails on the unique key; the retry in the same call
    // writes and mirrors only the first of each new key).
    let new = write_logs(
        &logger,
        vec![a.id; 3],
        vec!["incoming"; 3],
        vec!["in:w.a", "in:w.c", "in:w.c"],
        vec!["w.a", "w.c", "w.c"],
        vec!["again", "first", "second"],
        vec![None; 3],
    )
    .await;
    assert_eq!(new, 1, "only in:w.c is new");
    let logged: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT dedup_key, message_text FROM alphadome.bot_message_logs ORDER BY dedup_key",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        logged,
        vec![
            ("in:w.a".into(), Some("hi".into())),
            ("in:w.b".into(), Some("hi".into())),
            ("in:w.c".into(), Some("first".into())),
            ("out:w.a".into(), Some("hi".into())),
        ]
    );
    let mirrored: Vec<Option<String>> =
        sqlx::query_scalar("SELECT message_text FROM public.conversations ORDER BY message_text")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        mirrored,
        vec![
            Some("first".into()),
            Some("hi".into()),
            Some("hi".into()),
            Some("hi".into())
        ]
    );

    // Statuses in one batch: never regress, unknown wamids and other
    // tenants' rows are not found.
    let statuses = |tenants: Vec<Uuid>,
                    wamids: Vec<&'static str>,
                    statuses: Vec<&'static str>,
                    callbacks: Vec<&'static str>| {
        let pool = logger.clone();
        async move {
            let n = tenants.len();
            sqlx::query_as::<_, (i32, bool)>(
                "SELECT * FROM alphadome.apply_status_batch($1, $2, $3, $4, $5, $6) ORDER BY r_index",
            )
            .bind(&tenants)
            .bind(&wamids)
            .bind(&statuses)
            .bind(vec![chrono::Utc::now(); n])
            .bind(vec![None::<String>; n])
            .bind(&callbacks)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let found = statuses(
        vec![a.id, a.id, a.id, b.id, a.id],
        vec!["out.w.a", "out.w.a", "out.w.a", "out.w.a", "out.w.unknown"],
        vec!["delivered", "sent", "read", "failed", "read"],
        vec![""; 5],
    )
    .await;
    assert_eq!(
        found.iter().map(|f| f.1).collect::<Vec<_>>(),
        vec![true, true, true, false, false]
    );
    let status: Option<String> = sqlx::query_scalar(
        "SELECT delivery_status FROM alphadome.bot_message_logs WHERE dedup_key = 'out:w.a'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        status.as_deref(),
        Some("read"),
        "b's 'failed' must not reach a's row, 'sent' must not regress it"
    );

    // A status whose callback data names a reply still being sent proves
    // that part went out: the reply's progress is raised, under its own
    // tenant only, and only from the part it names.
    sqlx::query(
        "INSERT INTO alphadome.outbound_messages (outbound_id, bot_tenant_id, state, parts_sent) \
         VALUES ('reply:w.x', $1, 'sending', 0), ('reply:w.y', $1, 'sending', 0)",
    )
    .bind(a.id)
    .execute(&db.pool)
    .await
    .unwrap();
    statuses(
        vec![b.id, a.id, a.id, a.id],
        vec!["wamid.x0", "wamid.y0", "wamid.x0", "wamid.x5"],
        vec!["sent", "sent", "sent", "sent"],
        vec!["reply:w.y#0", "reply:w.y#1", "reply:w.x#0", "reply:w.x#5"],
    )
    .await;
    let progress: Vec<(String, i32, Option<String>, bool)> = sqlx::query_as(
        "SELECT outbound_id, parts_sent, whatsapp_message_id, updated_at > created_at \
         FROM alphadome.outbound_messages \
         WHERE outbound_id IN ('reply:w.x', 'reply:w.y') ORDER BY outbound_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        progress,
        vec![
            ("reply:w.x".into(), 1, Some("wamid.x0".into()), true),
            // b's status (and a part that was not the next) changed nothing.
            ("reply:w.y".into(), 0, None, false),
        ]
    );
}

/// The connections the batch calls keep between calls (`db::Sticky`): the
/// same backend serves the next call, and one that died while kept (a
/// restart, a terminated backend) fails its call once, is not kept, and the
/// call after it gets a live connection.
#[tokio::test]
async fn a_kept_connection_is_reused_and_a_dead_one_is_replaced() {
    let db = TestDb::migrated().await;
    let pool = as_role(&db, ServiceRole::Sender).await;
    let sticky = db::Sticky::new(pool.clone(), 1);
    let pid_of = |sticky: db::Sticky| async move {
        let mut conn = sticky.get().await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        conn.keep();
        pid
    };
    let first = pid_of(sticky.clone()).await;
    assert_eq!(
        (pool.size(), pool.num_idle()),
        (1, 0),
        "kept out of the pool between calls"
    );
    assert_eq!(pid_of(sticky.clone()).await, first);
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(ended);
    eventually(
        std::time::Duration::from_secs(5),
        "the backend gone",
        || async {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
                    .bind(first)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            (left == 0).then_some(())
        },
    )
    .await;
    let mut dead = sticky.get().await.unwrap();
    assert!(
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&mut *dead)
            .await
            .is_err(),
        "the kept connection was the terminated one"
    );
    drop(dead);
    let next = pid_of(sticky.clone()).await;
    assert_ne!(next, first, "a new connection replaced it");
    assert_eq!(pid_of(sticky).await, next);
}
