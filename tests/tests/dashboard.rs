//! The dashboard's pages over HTTP: signing in (login CSRF, wrong
//! passwords, the rate limit), every page rendered for a tenant-admin and
//! an agent of one tenant, another tenant's pages refused as if they did
//! not exist, signing out. The browser tests (tests/browser.rs) drive the
//! same pages in Chromium.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use alphadome_admin::people::{self, Role};
use alphadome_cli::stack::Service;
use alphadome_tests::{tenant, RunningStack, TenantSpec, TestEnv};
use reqwest::redirect::Policy;
use reqwest::Client;
use secrecy::SecretString;

fn client() -> Client {
    Client::builder().redirect(Policy::none()).build().unwrap()
}

/// The value of `name` among a response's Set-Cookie headers.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let first = v.split(';').next()?;
            let (k, val) = first.split_once('=')?;
            (k == name).then(|| val.to_owned())
        })
}

/// The hidden sign-in token of the login page.
fn form_token(html: &str) -> String {
    let at = html.find("name=\"token\" value=\"").unwrap() + "name=\"token\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

async fn sign_in(base: &str, email: &str, password: &str) -> (u16, Option<String>, String) {
    let c = client();
    let page = c.get(format!("{base}/login")).send().await.unwrap();
    let login_cookie = set_cookie(&page, "__Host-alphadome-login").unwrap();
    let token = form_token(&page.text().await.unwrap());
    let r = c
        .post(format!("{base}/login"))
        .header("cookie", format!("__Host-alphadome-login={login_cookie}"))
        .form(&[
            ("email", email),
            ("password", password),
            ("token", &token),
            ("next", "/"),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let session = set_cookie(&r, "__Host-alphadome");
    (status, session, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn pages_render_for_each_role_and_another_tenants_are_not_found() {
    let env = TestEnv::new().await;
    let a = tenant(&env.db.pool, &env.ring, TenantSpec::default()).await;
    let b = tenant(
        &env.db.pool,
        &env.ring,
        TenantSpec {
            name: "Other Shop",
            phone: "254700000002",
            phone_number_id: "100000000000002",
            token: "EAAG-test-token-2",
            ..TenantSpec::default()
        },
    )
    .await;
    sqlx::query(
        "INSERT INTO alphadome.bot_message_logs (bot_tenant_id, user_phone, direction, message_text, dedup_key) \
         VALUES ($1, '254711000001', 'incoming', 'Do you have guitars?', 'in:1')",
    )
    .bind(a.id)
    .execute(&env.db.pool)
    .await
    .unwrap();
    let stack = RunningStack::start(env.config(), &[Service::Admin]).await;
    let base = format!("http://{}", stack.addr);
    let password = "a long enough password";
    for (email, role) in [
        ("admin@shop.example", Role::TenantAdmin),
        ("desk@shop.example", Role::Agent),
    ] {
        people::add_user(
            &env.db.pool,
            email,
            role,
            Some(&a.phone),
            &SecretString::from(password.to_owned()),
            "254",
            "test",
        )
        .await
        .unwrap();
    }

    // A question the bot could not answer, waiting to be taught.
    let mut tx = alphadome_core::db::scoped(&env.db.pool, a.id)
        .await
        .unwrap();
    alphadome_core::training::record_ask(
        &mut tx,
        a.id,
        "wamid.teach.1",
        "Do you rent out amplifiers?",
        None,
        0.75,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // Every page forbids framing and foreign scripts.
    let r = client().get(format!("{base}/login")).send().await.unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    // Pages need a session: the sign-in page, with where to come back.
    let r = client()
        .get(format!("{base}/t/{}", a.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        format!("/login?next=/t/{}", a.id).as_str()
    );

    // A wrong password, and a form without its cookie's token, are refused.
    let (status, session, body) = sign_in(&base, "admin@shop.example", "wrong password").await;
    assert_eq!((status, session), (401, None));
    assert!(body.contains("Wrong e-mail or password."));
    let r = client()
        .post(format!("{base}/login"))
        .form(&[
            ("email", "admin@shop.example"),
            ("password", password),
            ("token", "forged"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    for email in ["admin@shop.example", "desk@shop.example"] {
        let (status, session, _) = sign_in(&base, email, password).await;
        assert_eq!(status, 303, "{email}");
        let cookie = format!("__Host-alphadome={}", session.unwrap());
        let get = |path: String| {
            let c = client();
            let cookie = cookie.clone();
            let url = format!("{base}{path}");
            async move {
                let r = c.get(url).header("cookie", cookie).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        // Home sends a tenant's people to their tenant.
        let (status, _) = get("/".into()).await;
        assert_eq!(status, 303);
        for (path, expect) in [
            (format!("/t/{}", a.id), "Go-live checklist"),
            (format!("/t/{}/inbox", a.id), "Do you have guitars?"),
            (
                format!("/t/{}/inbox/254711000001", a.id),
                "Do you have guitars?",
            ),
            (
                format!("/t/{}/messages?q=guitar", a.id),
                "Do you have guitars?",
            ),
            (format!("/t/{}/faq", a.id), "What are your opening hours?"),
            (format!("/t/{}/templates", a.id), "Templates"),
            (format!("/t/{}/teach", a.id), "Do you rent out amplifiers?"),
            (format!("/t/{}/settings", a.id), "Bot answers customers"),
            (
                format!("/t/{}/settings", a.id),
                "alerts and follow-ups reach only people who wrote in the last 24 hours",
            ),
            (format!("/audit?tenant={}", a.id), "Changes"),
        ] {
            let (status, html) = get(path.clone()).await;
            assert_eq!(status, 200, "{email} {path}");
            assert!(html.contains(expect), "{email} {path}");
            assert!(!html.contains("Other Shop"), "{email} {path}");
        }
        // An agent sees no editing forms; a tenant-admin does.
        let (_, html) = get(format!("/t/{}/faq", a.id)).await;
        assert_eq!(
            html.contains("id=\"add-faq\""),
            email.starts_with("admin"),
            "{email}"
        );
        // Another tenant's pages: not found.
        for path in [
            format!("/t/{}", b.id),
            format!("/t/{}/inbox", b.phone),
            format!("/t/{}/settings", b.id),
            format!("/t/{}/faq", b.id),
            format!("/t/{}/teach", b.id),
            format!("/audit?tenant={}", b.id),
        ] {
            let (status, html) = get(path.clone()).await;
            assert_eq!(status, 404, "{email} {path}");
            assert!(!html.contains("Other Shop"), "{email} {path}");
        }
        for path in ["/tenants/new", "/dead-letters"] {
            let (status, _) = get(path.into()).await;
            assert_eq!(status, 403, "{email} {path}");
        }
        // Signing out ends the session.
        let (_, html) = get(format!("/t/{}", a.id)).await;
        let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
        let csrf = html[at..].split('"').next().unwrap().to_owned();
        let r = client()
            .post(format!("{base}/logout"))
            .header("cookie", &cookie)
            .form(&[("csrf", "wrong")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let r = client()
            .post(format!("{base}/logout"))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let (status, _) = get(format!("/t/{}", a.id)).await;
        assert_eq!(status, 303, "the session outlived its sign-out");
    }

    // Guessing: after five tries for one address, refused for a while,
    // even with the right password.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(sign_in(&base, "admin@shop.example", "guess").await.0);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert_eq!(sign_in(&base, "admin@shop.example", password).await.0, 429);
    stack.stop().await.unwrap();
}
