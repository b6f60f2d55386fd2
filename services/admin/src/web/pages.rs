//! The dashboard's pages: the tenant list, a tenant's overview (go-live
//! checklist, activation, charts, unanswered questions), its inbox and
//! conversations, messages, FAQ and training data, templates, settings and
//! profile, and the change audit.

use std::collections::HashMap;
use std::sync::Arc;

use alphadome_logger::store::Stats;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Duration, DurationRound, Utc};
use maud::{html, Markup};

use super::{error_page, manages, page, Viewer, Web};
use crate::api::content::{load_templates, load_training};
use crate::api::golive::{load_checklist, load_stats};
use crate::api::inbox::{load_conversation, load_conversations, MessageQuery};
use crate::api::tenants::{load_list, load_settings, load_view};
use crate::api::training::load_candidates;
use crate::api::Problem;
use crate::people::{Role, Session};

pub fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/", get(home))
        .route("/tenants/new", get(new_tenant))
        .route("/audit", get(audit))
        .route("/dead-letters", get(dead_letters))
        .route("/t/{tenant}", get(overview))
        .route("/t/{tenant}/inbox", get(inbox))
        .route("/t/{tenant}/inbox/{user}", get(conversation))
        .route("/t/{tenant}/messages", get(messages))
        .route("/t/{tenant}/faq", get(faq))
        .route("/t/{tenant}/teach", get(teach))
        .route("/t/{tenant}/templates", get(templates))
        .route("/t/{tenant}/settings", get(settings))
}

/// A page's result: its markup, or a problem shown as a page.
type PageResult = Result<Response, Problem>;

fn render(r: PageResult) -> Response {
    r.unwrap_or_else(|p| error_page(&p))
}

/// The tenant's navigation.
fn tenant_nav(t: &str, name: &str) -> Markup {
    html! {
        strong { (name) }
        a href={"/t/" (t)} { "Overview" }
        a href={"/t/" (t) "/inbox"} { "Inbox" }
        a href={"/t/" (t) "/messages"} { "Messages" }
        a href={"/t/" (t) "/faq"} { "FAQ" }
        a href={"/t/" (t) "/teach"} { "Teach" }
        a href={"/t/" (t) "/templates"} { "Templates" }
        a href={"/t/" (t) "/settings"} { "Settings" }
        a href={"/audit?tenant=" (t)} { "Audit" }
    }
}

fn platform_nav(s: &Session) -> Markup {
    html! {
        @if s.principal.role == Role::PlatformAdmin {
            a href="/" { "Tenants" }
            a href="/tenants/new" { "New tenant" }
            a href="/audit" { "Audit" }
            a href="/dead-letters" { "Dead letters" }
        }
    }
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

async fn home(State(web): State<Arc<Web>>, Viewer(s): Viewer) -> Response {
    if let Some(own) = s.principal.tenant {
        return Redirect::to(&format!("/t/{own}")).into_response();
    }
    render(
        async {
            let list = load_list(&web.api, &s.principal).await?;
            let body = html! {
                div.row { h1 { "Tenants" } a.button href="/tenants/new" { "New tenant" } }
                div.card.scroll {
                    table {
                        thead { tr { th { "Name" } th { "Phone" } th { "Live" } th.wide { "FAQ" } th.wide { "Templates" } th { "State" } } }
                        tbody {
                            @for t in &list {
                                tr {
                                    td { a href={"/t/" (t.id)} { (t.client_name) } }
                                    td { (t.client_phone) }
                                    td { @if t.is_active { span.pill.ok { "live" } } @else { span.pill { "off" } } }
                                    td.wide { (t.faq_entries) }
                                    td.wide { (t.templates) }
                                    td { @if let Some(d) = &t.degraded { span.pill.bad { (d) } } @else { span.pill.ok { "ok" } } }
                                }
                            }
                        }
                    }
                    @if list.is_empty() { p.muted { "No tenants yet." } }
                }
            };
            Ok(page("Tenants", Some(&s), platform_nav(&s), body).into_response())
        }
        .await,
    )
}

async fn new_tenant(Viewer(s): Viewer) -> Response {
    if s.principal.role != Role::PlatformAdmin {
        return error_page(&Problem::forbidden("only a platform admin creates tenants"));
    }
    let body = html! {
        h1 { "New tenant" }
        div.card {
            form data-api="POST /api/v1/tenants" data-wrap="tenant" data-next="/t/{id}" {
                label for="client_name" { "Business name" }
                input #client_name type="text" name="client_name" required;
                label for="client_phone" { "Business phone (the WhatsApp number)" }
                input #client_phone type="text" name="client_phone" required placeholder="+254 7…";
                label for="client_email" { "E-mail" }
                input #client_email type="email" name="client_email" data-empty="omit";
                label for="whatsapp_phone_number_id" { "WhatsApp phone number id" }
                input #whatsapp_phone_number_id type="text" name="whatsapp_phone_number_id" data-empty="omit";
                label for="whatsapp_business_account_id" { "WhatsApp Business Account id" }
                input #whatsapp_business_account_id type="text" name="whatsapp_business_account_id" data-empty="omit";
                label for="whatsapp_access_token" { "WhatsApp access token" }
                input #whatsapp_access_token type="password" name="whatsapp_access_token" data-empty="omit" autocomplete="off";
                label for="whatsapp_app_secret" { "Meta app secret" }
                input #whatsapp_app_secret type="password" name="whatsapp_app_secret" data-empty="omit" autocomplete="off";
                p.muted { "The tenant starts off the air: go through its checklist, then put it live." }
                p.problem {}
                button type="submit" { "Create tenant" }
            }
        }
    };
    page("New tenant", Some(&s), platform_nav(&s), body).into_response()
}

/// Hours of the last day, oldest first, with their counts.
fn day_of_hours(stats: &Stats, now: DateTime<Utc>) -> Vec<(DateTime<Utc>, i64, i64, i64)> {
    let top = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
    let by_hour: HashMap<DateTime<Utc>, (i64, i64, i64)> = stats
        .hours
        .iter()
        .map(|h| (h.hour, (h.incoming, h.outgoing, h.errors)))
        .collect();
    (0..24)
        .rev()
        .map(|back| {
            let hour = top - Duration::hours(back);
            let (i, o, e) = by_hour.get(&hour).copied().unwrap_or_default();
            (hour, i, o, e)
        })
        .collect()
}

/// Messages per hour as an SVG bar chart (incoming and outgoing side by
/// side, errors as a red mark).
fn hours_chart(hours: &[(DateTime<Utc>, i64, i64, i64)]) -> Markup {
    let max = hours
        .iter()
        .map(|(_, i, o, _)| (*i).max(*o))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let (w, h) = (480.0, 140.0);
    let slot = w / hours.len().max(1) as f64;
    html! {
        svg.chart viewBox={"0 0 " (w) " " (h + 18.0)} role="img" aria-label="Messages per hour, last 24 hours" {
            @for (n, (hour, inc, out, err)) in hours.iter().enumerate() {
                @let x = n as f64 * slot;
                @let hi = *inc as f64 / max * h;
                @let ho = *out as f64 / max * h;
                rect.bar-in x=(x + 1.0) y=(h - hi) width=(slot / 2.0 - 1.0) height=(hi) {
                    title { (hour.format("%H:00")) ": " (inc) " in" }
                }
                rect.bar-out x=(x + slot / 2.0) y=(h - ho) width=(slot / 2.0 - 1.0) height=(ho) {
                    title { (hour.format("%H:00")) ": " (out) " out" }
                }
                @if *err > 0 {
                    rect.bar-err x=(x + 1.0) y=(h + 2.0) width=(slot - 2.0) height="4" {
                        title { (err) " errors" }
                    }
                }
                @if n % 6 == 0 {
                    text x=(x) y=(h + 16.0) font-size="10" fill="#667085" { (hour.format("%H:00")) }
                }
            }
        }
    }
}

/// What a reply reason means to a business.
fn reason_label(reason: &str) -> &'static str {
    match reason {
        "faq_match" | "canned_reply" | "greeting" => "FAQ and canned replies",
        "ai" => "AI",
        "fallback" | "ai_failed_fallback" => "Fallback (not understood)",
        "agent" => "People (agents)",
        "limit_notice" => "Limit notices",
        "handoff" => "Handoff to a person",
        _ => "Other",
    }
}

fn reasons_chart(stats: &Stats) -> Markup {
    let mut groups: Vec<(&'static str, i64)> = Vec::new();
    for r in &stats.reasons {
        let label = reason_label(&r.reason);
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some(g) => g.1 += r.replies,
            None => groups.push((label, r.replies)),
        }
    }
    let total: i64 = groups.iter().map(|g| g.1).sum::<i64>().max(1);
    html! {
        @if groups.is_empty() { p.muted { "No replies yet." } }
        @for (label, n) in &groups {
            @let pct = *n as f64 * 100.0 / total as f64;
            div { (label) " · " (n) " (" (format!("{pct:.0}")) " %)" }
            svg.chart viewBox="0 0 100 4" preserveAspectRatio="none" style="height:10px" {
                rect x="0" y="0" width="100" height="4" fill="#e4e7ec" {}
                rect.bar-out x="0" y="0" width=(pct) height="4" {}
            }
        }
    }
}

async fn overview(
    State(web): State<Arc<Web>>,
    Viewer(s): Viewer,
    Path(t): Path<String>,
) -> Response {
    render(
        async {
            let who = &s.principal;
            let view = load_view(&web.api, who, &t).await?;
            let list = load_checklist(&web.api, who, &t).await?;
            let stats = load_stats(&web.api, who, &t, 24).await?;
            let since = (Utc::now() - Duration::days(30)).date_naive();
            let usage = crate::api::ops::load_usage(&web.api, who, &t, since).await?;
            let now = Utc::now();
            let hours = day_of_hours(&stats, now);
            let errors: i64 = hours.iter().map(|h| h.3).sum();
            let id = view.id.to_string();
            let body = html! {
                div.row {
                    h1 { (view.client_name) }
                    @if view.is_active { span.pill.ok #live-state { "live" } } @else { span.pill #live-state { "off the air" } }
                }
                div.grid {
                    div.card {
                        h2 { "Go-live checklist" }
                        ul.checklist {
                            @for c in &list.checks {
                                li data-check=(c.key) data-done=(c.done) {
                                    @if c.done { span.pill.ok { "done" } } @else { span.pill.warn { "to do" } }
                                    " " strong { (c.label) } br; span.muted { (c.detail) }
                                }
                            }
                        }
                        @if manages(who.role) {
                            @if view.is_active {
                                button.danger #deactivate data-api={"POST /api/v1/tenants/" (id) "/deactivate"}
                                    data-confirm="Take the bot off the air? Messages will be logged but not answered." { "Take off the air" }
                            } @else {
                                button #activate data-api={"POST /api/v1/tenants/" (id) "/activate"}
                                    data-confirm=[(!list.ready).then_some("Some checks are not done. Put the bot live anyway?")] { "Put live" }
                            }
                        }
                    }
                    div.card {
                        h2 { "Replies by source (24 h)" }
                        (reasons_chart(&stats))
                        p {
                            "Reply time: "
                            @match (stats.latency_p50_ms, stats.latency_p95_ms) {
                                (Some(a), Some(b)) => { (format!("{a:.0}")) " ms median, " (format!("{b:.0}")) " ms p95" }
                                _ => { span.muted { "no replies yet" } }
                            }
                        }
                        p { "Errors: " @if errors > 0 { span.pill.bad { (errors) } } @else { span.pill.ok { "0" } } }
                    }
                }
                div.card {
                    h2 { "Messages per hour (24 h)" }
                    p.muted { span style="color:#2e90fa" { "■" } " in  " span style="color:#0b6e4f" { "■" } " out  " span style="color:#b42318" { "■" } " errors" }
                    (hours_chart(&hours))
                }
                div.card.scroll {
                    h2 { "Usage (30 days)" }
                    @if usage.is_empty() { p.muted { "No messages yet." } }
                    @else {
                        table {
                            thead { tr { th { "Day" } th { "In" } th { "Out" } th { "AI replies" } th.wide { "AI tokens" } } }
                            tbody {
                                @for d in usage.iter().rev() {
                                    tr {
                                        td { (d.day) } td { (d.incoming) } td { (d.outgoing) } td { (d.ai_replies) }
                                        td.wide { (d.prompt_tokens + d.completion_tokens) }
                                    }
                                }
                            }
                        }
                    }
                }
                div.card {
                    h2 { "Questions the bot could not answer (24 h)" }
                    @if stats.unanswered.is_empty() { p.muted { "None: every question found an answer." } }
                    @else {
                        div.scroll { table {
                            thead { tr { th { "Question" } th { "Asked" } th.wide { "Last" } th {} } }
                            tbody {
                                @for u in &stats.unanswered {
                                    tr {
                                        td { (u.question) }
                                        td { (u.times) }
                                        td.wide { (when(&u.last_at)) }
                                        td { @if manages(who.role) { a href={"/t/" (id) "/faq?question=" (super::encode(&u.question))} { "Answer in FAQ" } } }
                                    }
                                }
                            }
                        } }
                    }
                }
            };
            Ok(page(&view.client_name, Some(&s), tenant_nav(&id, &view.client_name), body).into_response())
        }
        .await,
    )
}

async fn inbox(State(web): State<Arc<Web>>, Viewer(s): Viewer, Path(t): Path<String>) -> Response {
    render(
        async {
            let view = load_view(&web.api, &s.principal, &t).await?;
            let list = load_conversations(&web.api, &s.principal, &t).await?;
            let id = view.id.to_string();
            let body = html! {
                h1 { "Inbox" }
                div.card.scroll {
                    table {
                        thead { tr { th { "Customer" } th { "Last message" } th.wide { "When" } th { "State" } } }
                        tbody {
                            @for c in &list {
                                tr {
                                    td { a href={"/t/" (id) "/inbox/" (c.last.user_phone)} { "+" (c.last.user_phone) } }
                                    td { @if c.last.last_direction == "outgoing" { span.muted { "↩ " } } (c.last.last_text.as_deref().unwrap_or("")) }
                                    td.wide { (when(&c.last.last_at)) }
                                    td {
                                        @if c.handoff.is_some() { span.pill.warn { "waiting for a person" } " " }
                                        @if c.in_window { span.pill.ok { "24 h open" } } @else { span.pill { "window closed" } }
                                    }
                                }
                            }
                        }
                    }
                    @if list.is_empty() { p.muted { "No conversations yet." } }
                }
            };
            Ok(page("Inbox", Some(&s), tenant_nav(&id, &view.client_name), body).into_response())
        }
        .await,
    )
}

async fn conversation(
    State(web): State<Arc<Web>>,
    Viewer(s): Viewer,
    Path((t, user)): Path<(String, String)>,
) -> Response {
    render(
        async {
            let view = load_view(&web.api, &s.principal, &t).await?;
            let q = MessageQuery {
                limit: Some("100".into()),
                ..Default::default()
            };
            let c = load_conversation(&web.api, &s.principal, &t, &user, &q).await?;
            let templates = crate::api::messaging::load_templates(&web.api, &s.principal, &t).await?;
            let id = view.id.to_string();
            let api_path = format!("/api/v1/tenants/{id}/conversations/{user}");
            let body = html! {
                div.row {
                    h1 { "+" (user) }
                    @if c.conversation.handoff.is_some() {
                        span.pill.warn { "waiting for a person" }
                        button.secondary #resume data-api={"POST " (api_path) "/resume"} { "Give back to the bot" }
                    }
                    @if let Some(at) = &c.conversation.opted_out_at {
                        span.pill.warn #opted-out title={"since " (when(at))} { "wrote STOP" }
                    }
                    @if c.conversation.state != "idle" { span.pill { (c.conversation.state) } }
                }
                div.card {
                    div #chat .chat data-poll={(api_path) "?limit=100"} {
                        @for m in c.page.messages.iter().rev() {
                            div class={"bubble " (m.direction)} data-id=(m.id) {
                                (m.message_text.as_deref().unwrap_or(""))
                                span.meta {
                                    @if m.direction == "outgoing" {
                                        (m.metadata.get("author").and_then(|a| a.as_str())
                                            .or_else(|| m.metadata.get("reason").and_then(|a| a.as_str())).unwrap_or("bot"))
                                    } @else { "customer" }
                                    " · " (m.created_at.format("%H:%M"))
                                    @if let Some(d) = &m.delivery_status { " · " (d) }
                                }
                            }
                        }
                    }
                    p.muted #window-state {
                        @if c.conversation.in_window { "inside the 24-hour window" }
                        @else { "outside the 24-hour window: only a template may be sent" }
                    }
                    @if c.conversation.in_window {
                        form.reply data-api={"POST " (api_path) "/messages"} data-next="reset" {
                            textarea name="text" aria-label="Reply" placeholder="Write a reply…" required {}
                            button type="submit" { "Send" }
                            p.problem {}
                        }
                    } @else if templates.is_empty() {
                        p.muted { "Outside the 24-hour window, and the business has no approved WhatsApp templates (see Settings), so nothing can be sent until the customer writes again." }
                    } @else {
                        form.reply #template-reply data-api={"POST " (api_path) "/messages"} data-next="reset" {
                            label for="template-name" { "Template" }
                            select #template-name name="template.name" {
                                @for tpl in &templates {
                                    option value=(tpl.name) { (tpl.name) " (" (tpl.language) ", " (tpl.parameters.len()) " parameters)" }
                                }
                            }
                            label for="template-parameters" { "Parameters, one per line" }
                            textarea #template-parameters name="template.parameters" data-type="lines" {}
                            button type="submit" { "Send template" }
                            p.problem {}
                        }
                    }
                }
            };
            Ok(page("Conversation", Some(&s), tenant_nav(&id, &view.client_name), body).into_response())
        }
        .await,
    )
}

async fn messages(
    State(web): State<Arc<Web>>,
    Viewer(s): Viewer,
    Path(t): Path<String>,
    Query(q): Query<MessageQuery>,
) -> Response {
    render(
        async {
            let view = load_view(&web.api, &s.principal, &t).await?;
            let id = view.id.to_string();
            let found = crate::api::inbox::load_messages(&web.api, &s.principal, &t, &q).await?;
            let keep = |k: &str, v: &Option<String>| {
                v.as_deref()
                    .filter(|v| !v.is_empty())
                    .map(|v| format!("&{k}={}", super::encode(v)))
                    .unwrap_or_default()
            };
            let more = found.next_cursor.as_ref().map(|c| {
                format!(
                    "/t/{id}/messages?cursor={c}{}{}{}{}{}",
                    keep("q", &q.q),
                    keep("user", &q.user),
                    keep("direction", &q.direction),
                    keep("since", &q.since),
                    keep("until", &q.until)
                )
            });
            let body = html! {
                h1 { "Messages" }
                form.card method="get" {
                    div.grid {
                        div { label for="q" { "Text" } input #q type="search" name="q" value=[q.q.as_deref()]; }
                        div { label for="user" { "Customer" } input #user type="text" name="user" value=[q.user.as_deref()]; }
                        div {
                            label for="direction" { "Direction" }
                            select #direction name="direction" {
                                option value="" { "both" }
                                option value="incoming" selected[q.direction.as_deref() == Some("incoming")] { "from customers" }
                                option value="outgoing" selected[q.direction.as_deref() == Some("outgoing")] { "replies" }
                            }
                        }
                    }
                    p { button type="submit" { "Search" } }
                }
                div.card.scroll {
                    table {
                        thead { tr { th { "When" } th { "Customer" } th { "Text" } th.wide { "How" } } }
                        tbody {
                            @for m in &found.messages {
                                tr {
                                    td { (when(&m.created_at)) }
                                    td { @if let Some(u) = &m.user_phone { a href={"/t/" (id) "/inbox/" (u)} { (u) } } }
                                    td { @if m.direction == "outgoing" { "↩ " } (m.message_text.as_deref().unwrap_or("")) }
                                    td.wide { (m.metadata.get("reason").and_then(|r| r.as_str()).unwrap_or("")) }
                                }
                            }
                        }
                    }
                    @if found.messages.is_empty() { p.muted { "Nothing found." } }
                    @if let Some(m) = &more { p { a href=(m) { "Older messages →" } } }
                }
            };
            Ok(page("Messages", Some(&s), tenant_nav(&id, &view.client_name), body).into_response())
        }
        .await,
    )
}

#[derive(Debug, Default, serde::Deserialize)]
struct FaqQuery {
    question: Option<String>,
}

async fn faq(
    State(web): State<Arc<Web>>,
    Viewer(s): Viewer,
    Path(t): Path<String>,
    Query(q): Query<FaqQuery>,
) -> Response {
    render(
        async {
            let view = load_view(&web.api, &s.principal, &t).await?;
            let rows = load_training(&web.api, &s.principal, &t).await?;
            let id = view.id.to_string();
            let base = format!("/api/v1/tenants/{id}/training-data");
            let can = manages(s.principal.role);
            let body = html! {
                h1 { "FAQ and training data" }
                @if can {
                    div.card {
                        h2 { "Add an answer" }
                        form #add-faq data-api={"POST " (base)} {
                            label for="data_type" { "Kind" }
                            select #data_type name="data_type" {
                                option value="faq" { "FAQ" } option value="canned_reply" { "Canned reply" } option value="example" { "Example" }
                            }
                            label for="question" { "Question" }
                            input #question type="text" name="question" value=[q.question.as_deref()] required;
                            label for="answer" { "Answer" }
                            textarea #answer name="answer" required {}
                            label for="category" { "Category" }
                            input #category type="text" name="category" data-empty="null";
                            label for="priority" { "Priority" }
                            input #priority type="number" name="priority" value="0" data-type="int" data-empty="omit";
                            p.problem {}
                            button type="submit" { "Add" }
                        }
                    }
                }
                div.card.scroll {
                    div.row {
                        a href={(base) "/export"} { "Export CSV" } " · " a href={(base) "/export?format=yaml"} { "Export YAML" }
                    }
                    table #faq-rows {
                        thead { tr { th { "Kind" } th { "Question" } th { "Answer" } th.wide { "Priority" } th { "Active" } th {} } }
                        tbody {
                            @for r in &rows {
                                tr {
                                    td { (r.data_type) }
                                    td { (r.question.as_deref().unwrap_or("")) }
                                    td { (r.answer.as_deref().unwrap_or("")) }
                                    td.wide { (r.priority) }
                                    td { @if r.is_active { "yes" } @else { "no" } }
                                    td {
                                        @if can {
                                            button.secondary data-api={"PATCH " (base) "/" (r.id)} data-body=(serde_json::json!({"is_active": !r.is_active}).to_string()) {
                                                @if r.is_active { "Pause" } @else { "Use" }
                                            }
                                            " "
                                            button.danger data-api={"DELETE " (base) "/" (r.id)} data-confirm="Delete this entry?" { "Delete" }
                                            details {
                                                summary { "Edit" }
                                                form data-api={"PATCH " (base) "/" (r.id)} {
                                                    label { "Question" input type="text" name="question" value=(r.question.as_deref().unwrap_or("")); }
                                                    label { "Answer" textarea name="answer" { (r.answer.as_deref().unwrap_or("")) } }
                                                    label { "Category" input type="text" name="category" data-empty="null" value=[r.category.as_deref()]; }
                                                    label { "Priority" input type="number" name="priority" data-type="int" data-empty="omit" value=(r.priority); }
                                                    p.problem {}
                                                    button type="submit" { "Save" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if can {
                    div.card {
                        h2 { "Import" }
                        p.muted { "CSV with a header row (data_type, question, answer, category, priority, confidence_score, is_active) or YAML. Rows match by kind and question; nothing is written if any row is wrong." }
                        form data-api={"POST " (base) "/import"} {
                            input type="file" name="file" accept=".csv,.yaml,.yml,text/csv";
                            p.problem {}
                            button type="submit" { "Import" }
                        }
                    }
                }
            };
            Ok(page("FAQ", Some(&s), tenant_nav(&id, &view.client_name), body).into_response())
        }
        .await,
    )
}

/// Training mode's candidates: what customers asked that the bot could not
/// answer, grouped by meaning, each with a box to teach its answer.
async fn teach(State(web): State<Arc<Web>>, Viewer(s): Viewer, Path(t): Path<String>) -> Response {
    render(
        async {
            let view = load_view(&web.api, &s.principal, &t).await?;
            let settings = load_settings(&web.api, &s.principal, &t).await?;
            let rows = load_candidates(&web.api, &s.principal, &t).await?;
            let id = view.id.to_string();
            let base = format!("/api/v1/tenants/{id}/training-candidates");
            let can = manages(s.principal.role);
            let body = html! {
                h1 { "Teach the bot" }
                @if !settings.enable_training_mode {
                    p.muted { "Training mode is off: switch it on in Settings to collect the questions the bot could not answer." }
                }
                @if rows.is_empty() {
                    div.card { p.muted { "No unanswered questions waiting." } }
                }
                @for c in &rows {
                    div.card.candidate {
                        h2 { (c.question) }
                        p.muted { "Asked " (c.ask_count) " time(s), last " (c.last_asked_at.format("%Y-%m-%d %H:%M")) " UTC" }
                        @if c.examples.len() > 1 {
                            ul { @for e in &c.examples { li { (e) } } }
                        }
                        @if can {
                            form data-api={"POST " (base) "/" (c.id) "/teach"} {
                                label { "Answer" textarea name="answer" required { (c.proposed_answer.as_deref().unwrap_or("")) } }
                                p.problem {}
                                button type="submit" { "Teach" }
                                " "
                                button.secondary type="button" data-api={"POST " (base) "/" (c.id) "/dismiss"} { "Dismiss" }
                            }
                        }
                    }
                }
            };
            Ok(page("Teach", Some(&s), tenant_nav(&id, &view.client_name), body).into_response())
        }
        .await,
    )
}

async fn templates(
    State(web): State<Arc<Web>>,
    Viewer(s): Viewer,
    Path(t): Path<String>,
) -> Response {
    render(
        async {
            let view = load_view(&web.api, &s.principal, &t).await?;
            let rows = load_templates(&web.api, &s.principal, &t).await?;
            let id = view.id.to_string();
            let base = format!("/api/v1/tenants/{id}/templates");
            let can = manages(s.principal.role);
            let body = html! {
                h1 { "Templates" }
                p.muted { "A template is the AI's instructions and tone; the default one is used." }
                @for r in &rows {
                    div.card {
                        div.row {
                            strong { (r.template_name) }
                            @if r.is_default { span.pill.ok { "default" } }
                            @if !r.is_active { span.pill { "inactive" } }
                            span.muted { (r.tone) }
                        }
                        @if let Some(d) = &r.description { p { (d) } }
                        @if let Some(p) = &r.system_prompt { pre style="white-space:pre-wrap" { (p) } }
                        @if can {
                            div.row {
                                @if !r.is_default {
                                    button.secondary data-api={"PATCH " (base) "/" (r.id)} data-body=r#"{"is_default": true, "is_active": true}"# { "Make default" }
                                }
                                button.danger data-api={"DELETE " (base) "/" (r.id)} data-confirm="Delete this template?" { "Delete" }
                            }
                            details {
                                summary { "Edit" }
                                form data-api={"PATCH " (base) "/" (r.id)} {
                                    label { "Description" input type="text" name="description" data-empty="null" value=[r.description.as_deref()]; }
                                    label { "Instructions for the AI" textarea name="system_prompt" data-empty="null" { (r.system_prompt.as_deref().unwrap_or("")) } }
                                    label { "Tone"
                                        select name="tone" {
                                            @for t in ["friendly", "professional"] { option value=(t) selected[r.tone == t] { (t) } }
                                        }
                                    }
                                    label { "Longest reply (characters; empty: no limit)"
                                        input type="number" min="1" max="4096" name="max_response_length" data-type="int" value=[r.max_response_length];
                                    }
                                    label.check { input type="checkbox" name="is_active" checked[r.is_active]; "Active" }
                                    p.problem {}
                                    button type="submit" { "Save" }
                                }
                            }
                        }
                    }
                }
                @if can {
                    div.card {
                        h2 { "New template" }
                        form data-api={"POST " (base)} {
                            label for="template_name" { "Name" }
                            input #template_name type="text" name="template_name" required;
                            label for="description" { "Description" }
                            input #description type="text" name="description" data-empty="null";
                            label for="system_prompt" { "Instructions for the AI" }
                            textarea #system_prompt name="system_prompt" data-empty="null" {}
                            label for="tone" { "Tone" }
                            select #tone name="tone" { option value="friendly" { "friendly" } option value="professional" { "professional" } }
                            label.check { input type="checkbox" name="is_default"; "Make it the default" }
                            p.problem {}
                            button type="submit" { "Add template" }
                        }
                    }
                }
            };
            Ok(page("Templates", Some(&s), tenant_nav(&id, &view.client_name), body).into_response())
        }
        .await,
    )
}

/// A settings checkbox.
fn toggle(name: &str, label: &str, on: bool, can: bool) -> Markup {
    html! {
        label.check { input type="checkbox" name=(name) checked[on] disabled[!can]; (label) }
    }
}

async fn settings(
    State(web): State<Arc<Web>>,
    Viewer(s): Viewer,
    Path(t): Path<String>,
) -> Response {
    render(
        async {
            let view = load_view(&web.api, &s.principal, &t).await?;
            let c = load_settings(&web.api, &s.principal, &t).await?;
            let templates = crate::api::messaging::load_templates(&web.api, &s.principal, &t).await?;
            let id = view.id.to_string();
            let can = manages(s.principal.role);
            let body = html! {
                h1 { "Settings" }
                div.card {
                    h2 { "The bot" }
                    form #settings data-api={"PATCH /api/v1/tenants/" (id) "/settings"} {
                        (toggle("is_bot_enabled", "Bot answers customers", c.is_bot_enabled, can))
                        (toggle("enable_auto_reply", "Automatic replies (FAQ and canned replies)", c.enable_auto_reply, can))
                        (toggle("enable_ai_responses", "AI answers what the FAQ does not", c.enable_ai_responses, can))
                        (toggle("enable_training_mode", "Training mode", c.enable_training_mode, can))
                        (toggle("enable_payment_flow", "Payments in the chat", c.enable_payment_flow, can))
                        (toggle("log_conversations", "Keep the conversation log", c.log_conversations, can))
                        (toggle("log_errors", "Log errors", c.log_errors, can))
                        label for="max_messages_per_hour" { "Replies per hour (empty: no cap)" }
                        input #max_messages_per_hour type="number" min="0" name="max_messages_per_hour" data-type="int" value=[c.max_messages_per_hour] disabled[!can];
                        label for="max_messages_per_user_per_day" { "Replies per customer per day (empty: no cap)" }
                        input #max_messages_per_user_per_day type="number" min="0" name="max_messages_per_user_per_day" data-type="int" value=[c.max_messages_per_user_per_day] disabled[!can];
                        label for="handoff_pause_minutes" { "Minutes the bot stays quiet after a handoff" }
                        input #handoff_pause_minutes type="number" min="0" name="handoff_pause_minutes" data-type="int" data-empty="omit" value=(c.handoff_pause_minutes) disabled[!can];
                        label for="escalation_phone" { "Escalation phone" }
                        input #escalation_phone type="text" name="escalation_phone" data-empty="null" value=[c.escalation_phone.as_deref()] disabled[!can];
                        label for="escalation_email" { "Escalation e-mail" }
                        input #escalation_email type="email" name="escalation_email" data-empty="null" value=[c.escalation_email.as_deref()] disabled[!can];
                        label for="fallback_reply" { "Reply when nothing matches" }
                        textarea #fallback_reply name="fallback_reply" data-empty="null" disabled[!can] { (c.fallback_reply.as_deref().unwrap_or("")) }
                        h2 { "Conversations" }
                        label for="greeting_message" { "Greeting at the start of a conversation (after 24 hours of silence)" }
                        textarea #greeting_message name="greeting_message" data-empty="null" disabled[!can] { (c.greeting_message.as_deref().unwrap_or("")) }
                        label for="business_hours" { "Opening hours (JSON: timezone, weekly, closed_dates; empty: always open)" }
                        textarea #business_hours name="business_hours" data-type="json" disabled[!can] {
                            (c.business_hours.as_ref().map(|h| h.to_string()).unwrap_or_default())
                        }
                        label for="out_of_hours_reply" { "Out-of-hours reply" }
                        textarea #out_of_hours_reply name="out_of_hours_reply" data-empty="null" disabled[!can] { (c.out_of_hours_reply.as_deref().unwrap_or("")) }
                        (toggle("answer_out_of_hours", "Answer out of hours too (with the out-of-hours note)", c.answer_out_of_hours, can))
                        (toggle("send_read_receipts", "Mark messages read (typing shown while the AI writes)", c.send_read_receipts, can))
                        label for="debounce_ms" { "Wait this many milliseconds for more messages before answering (0: answer each at once)" }
                        input #debounce_ms type="number" min="0" max="10000" name="debounce_ms" data-type="int" data-empty="omit" value=(c.debounce_ms) disabled[!can];
                        label for="opt_out_keywords" { "Own words for STOP, comma separated" }
                        input #opt_out_keywords type="text" name="opt_out_keywords" data-type="words" value=(c.opt_out_keywords.join(", ")) disabled[!can];
                        label for="opt_in_keywords" { "Own words for START, comma separated" }
                        input #opt_in_keywords type="text" name="opt_in_keywords" data-type="words" value=(c.opt_in_keywords.join(", ")) disabled[!can];
                        p.problem {}
                        @if can { button type="submit" { "Save settings" } }
                    }
                }
                div.card #whatsapp-templates {
                    h2 { "WhatsApp templates" }
                    p.muted { "Approved by Meta for this number: the only messages that reach someone who has not written in 24 hours. Set them in the tenant's manifest (whatsapp_templates) or with PUT /api/v1/tenants/" (id) "/whatsapp-templates." }
                    @if templates.is_empty() {
                        p { "None yet: alerts and follow-ups reach only people who wrote in the last 24 hours." }
                    } @else {
                        table {
                            thead { tr { th { "Name" } th { "Language" } th { "Parameters" } th { "Used for" } } }
                            tbody {
                                @for tpl in &templates {
                                    tr {
                                        td { (tpl.name) }
                                        td { (tpl.language) }
                                        td { (tpl.parameters.join(", ")) }
                                        td { (tpl.use_for.join(", ")) }
                                    }
                                }
                            }
                        }
                    }
                }
                @if can {
                    div.card {
                        h2 { "Business and credentials" }
                        form #profile data-api={"PATCH /api/v1/tenants/" (id)} {
                            label for="client_name" { "Business name" }
                            input #client_name type="text" name="client_name" value=(view.client_name);
                            label for="client_email" { "E-mail" }
                            input #client_email type="email" name="client_email" data-empty="null" value=[view.client_email.as_deref()];
                            label for="whatsapp_phone_number_id" { "WhatsApp phone number id" }
                            // The platform's to set: it routes Meta's webhooks.
                            input #whatsapp_phone_number_id type="text" name="whatsapp_phone_number_id" data-empty="null"
                                value=[view.whatsapp_phone_number_id.as_deref()] disabled[s.principal.role != Role::PlatformAdmin];
                            label for="ai_provider" { "AI provider" }
                            select #ai_provider name="ai_provider" data-empty="null" {
                                option value="" { "none" }
                                @for p in ["openai", "openrouter", "huggingface", "openai_compatible"] {
                                    option value=(p) selected[view.ai_provider.as_deref() == Some(p)] { (p) }
                                }
                            }
                            label for="ai_model" { "AI model" }
                            input #ai_model type="text" name="ai_model" data-empty="null" value=[view.ai_model.as_deref()];
                            label for="ai_base_url" { "AI base URL (self-hosted)" }
                            input #ai_base_url type="text" name="ai_base_url" data-empty="null" value=[view.ai_base_url.as_deref()];
                            p.muted { "Credentials are write-only: leave a field empty to keep what is stored. Changing the AI provider or address needs the AI key again." }
                            label for="whatsapp_access_token" { "WhatsApp access token · " span.muted { (view.whatsapp_access_token) } }
                            input #whatsapp_access_token type="password" name="whatsapp_access_token" data-empty="omit" autocomplete="off";
                            label for="whatsapp_app_secret" { "Meta app secret · " span.muted { (view.whatsapp_app_secret) } }
                            input #whatsapp_app_secret type="password" name="whatsapp_app_secret" data-empty="omit" autocomplete="off";
                            label for="ai_api_key" { "AI API key · " span.muted { (view.ai_api_key) } }
                            input #ai_api_key type="password" name="ai_api_key" data-empty="omit" autocomplete="off";
                            p.problem {}
                            button type="submit" { "Save" }
                        }
                    }
                }
            };
            Ok(page("Settings", Some(&s), tenant_nav(&id, &view.client_name), body).into_response())
        }
        .await,
    )
}

#[derive(Debug, Default, serde::Deserialize)]
struct AuditQuery {
    tenant: Option<String>,
}

async fn audit(
    State(web): State<Arc<Web>>,
    Viewer(s): Viewer,
    Query(q): Query<AuditQuery>,
) -> Response {
    render(
        async {
            let named = q.tenant.as_deref().filter(|t| !t.is_empty());
            let records =
                crate::api::ops::load_audit(&web.api, &s.principal, named, None, 200).await?;
            let nav = match (named, s.principal.tenant) {
                (Some(t), _) => {
                    let v = load_view(&web.api, &s.principal, t).await?;
                    tenant_nav(&v.id.to_string(), &v.client_name)
                }
                (None, Some(own)) => {
                    let v = load_view(&web.api, &s.principal, &own.to_string()).await?;
                    tenant_nav(&v.id.to_string(), &v.client_name)
                }
                (None, None) => platform_nav(&s),
            };
            let body = html! {
                h1 { "Changes" }
                div.card.scroll {
                    table {
                        thead { tr { th { "When" } th { "Who" } th { "What" } th { "Changed" } } }
                        tbody {
                            @for r in &records {
                                tr {
                                    td { (when(&r.at)) }
                                    td { (r.actor) }
                                    td { (r.action) " " span.muted { (r.subject) } }
                                    td { (crate::changes::changed_keys(r.before.as_ref(), r.after.as_ref()).join(", ")) }
                                }
                            }
                        }
                    }
                    @if records.is_empty() { p.muted { "No changes recorded." } }
                }
            };
            Ok(page("Audit", Some(&s), nav, body).into_response())
        }
        .await,
    )
}

async fn dead_letters(State(web): State<Arc<Web>>, Viewer(s): Viewer) -> Response {
    if s.principal.role != Role::PlatformAdmin {
        return error_page(&Problem::forbidden(
            "only a platform admin handles dead letters",
        ));
    }
    render(
        async {
            let letters = crate::dlq::list(&web.api.bus)
                .await
                .map_err(|e| Problem::unavailable(&e))?;
            let body = html! {
                h1 { "Dead letters" }
                p.muted { "Messages that failed every attempt, with why. Replay one once its cause is fixed: a reply is still never sent twice." }
                div.card.scroll {
                    table {
                        thead { tr { th { "#" } th { "Tenant" } th { "Message" } th { "Why" } th.wide { "From" } th {} } }
                        tbody {
                            @for l in &letters {
                                tr {
                                    td { (l.seq) }
                                    td { a href={"/t/" (l.tenant_id)} { (l.tenant_id) } }
                                    td { (l.id) }
                                    td { (l.reason) }
                                    td.wide { (l.source_subject) }
                                    td { button data-api={"POST /api/v1/dead-letters/" (l.seq) "/replay"} { "Replay" } }
                                }
                            }
                        }
                    }
                    @if letters.is_empty() { p.muted { "None: nothing has failed." } }
                }
            };
            Ok(page("Dead letters", Some(&s), platform_nav(&s), body).into_response())
        }
        .await,
    )
}
