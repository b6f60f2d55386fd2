//! Training data in bulk: import from CSV or YAML (every row checked
//! first; one bad row and nothing is written, every bad row named) and
//! export in the same two forms, so a spreadsheet can go out and come back.

use std::sync::Arc;

use alphadome_core::tenant::store::{edits, TrainingWrite};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::content::{Training, TrainingInput};
use super::problem::FieldError;
use super::tenants::record_change;
use super::{require, Access, Api, Caller, Problem, Scope};

/// The columns of the CSV form, in order (the YAML form's keys).
const COLUMNS: [&str; 7] = [
    "data_type",
    "question",
    "answer",
    "category",
    "priority",
    "confidence_score",
    "is_active",
];

/// A row of an import: its number (a CSV row's line, a YAML row's
/// position) and its fields.
type Row = (usize, Map<String, Value>);

/// The most rows one import takes.
const MAX_ROWS: usize = 10_000;

/// Which form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Yaml,
}

/// `?format=csv|yaml`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FormatQuery {
    /// `csv` or `yaml`; for an import, the body's `Content-Type` says it
    /// when this is left out (`text/csv`, `application/yaml`).
    pub format: Option<String>,
}

fn format_of(q: &FormatQuery, headers: Option<&HeaderMap>) -> Result<Format, Problem> {
    let named = q.format.as_deref().filter(|f| !f.is_empty()).or_else(|| {
        headers
            .and_then(|h| h.get(header::CONTENT_TYPE))
            .and_then(|v| v.to_str().ok())
    });
    match named.map(str::to_ascii_lowercase) {
        None if headers.is_none() => Ok(Format::Csv),
        Some(f) if f.contains("csv") => Ok(Format::Csv),
        Some(f) if f.contains("yaml") || f.contains("yml") || f.contains("json") => {
            Ok(Format::Yaml)
        }
        other => Err(Problem::invalid(
            "format",
            format!(
                "{:?} is neither csv nor yaml (say which with ?format= or Content-Type)",
                other.unwrap_or_default()
            ),
        )),
    }
}

/// The rows of a CSV text as JSON objects (empty cells left out; numbers
/// and booleans typed when they read as such), each with its line, and the
/// records that could not be read at all.
fn csv_rows(text: &str) -> Result<(Vec<Row>, Vec<FieldError>), Problem> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| Problem::invalid("rows", format!("the CSV header can't be read: {e}")))?
        .clone();
    for h in headers.iter() {
        if !COLUMNS.contains(&h) {
            return Err(Problem::invalid(
                "rows",
                format!(
                    "unknown column {h:?}; the columns are {}",
                    COLUMNS.join(", ")
                ),
            ));
        }
    }
    let mut rows = Vec::new();
    let mut unreadable = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or_default();
                unreadable.push(FieldError {
                    field: format!("rows[{line}]"),
                    detail: e.to_string(),
                });
                continue;
            }
        };
        let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
        let mut row = Map::new();
        for (h, cell) in headers.iter().zip(record.iter()) {
            if cell.is_empty() {
                continue;
            }
            let v = match h {
                "priority" => cell.parse::<i64>().map(Value::from).ok(),
                "confidence_score" => cell.parse::<f64>().map(Value::from).ok(),
                "is_active" => match cell.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "1" => Some(Value::Bool(true)),
                    "false" | "no" | "0" => Some(Value::Bool(false)),
                    _ => None,
                },
                _ => None,
            };
            row.insert(h.to_owned(), v.unwrap_or_else(|| Value::from(cell)));
        }
        rows.push((line, row));
    }
    Ok((rows, unreadable))
}

/// The rows of a YAML (or JSON) text: a list of mappings, or a manifest's
/// `training_data:` list.
fn yaml_rows(text: &str) -> Result<Vec<Row>, Problem> {
    let doc: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| Problem::invalid("rows", format!("not YAML: {e}")))?;
    let list = match doc {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("training_data") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(Problem::invalid(
                    "rows",
                    "expected a list of rows, or a mapping with a training_data list",
                ))
            }
        },
        _ => return Err(Problem::invalid("rows", "expected a list of rows")),
    };
    list.into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(o) => Ok((i + 1, o)),
            _ => Err(Problem::invalid(
                format!("rows[{}]", i + 1),
                "is not a mapping",
            )),
        })
        .collect()
}

/// Every row as a training row, or every bad field of every row (after
/// `errors`, the rows that could not be read).
fn check(rows: Vec<Row>, mut errors: Vec<FieldError>) -> Result<Vec<Training>, Problem> {
    if rows.is_empty() && errors.is_empty() {
        return Err(Problem::invalid("rows", "there are no rows"));
    }
    if rows.len() > MAX_ROWS {
        return Err(Problem::invalid(
            "rows",
            format!("{} rows; at most {MAX_ROWS} per import", rows.len()),
        ));
    }
    let mut good = Vec::with_capacity(rows.len());
    let mut seen = std::collections::HashMap::new();
    for (n, row) in rows {
        let parsed: Result<TrainingInput, _> = serde_path_to_error::deserialize(Value::Object(row));
        let checked = match parsed {
            Ok(input) => input.over(None),
            Err(e) => {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                let field = if path == "." {
                    format!("rows[{n}]")
                } else {
                    format!("rows[{n}].{path}")
                };
                errors.push(FieldError {
                    field,
                    detail: message,
                });
                continue;
            }
        };
        match checked {
            Ok(r) => {
                let key = (r.data_type.clone(), r.question.clone());
                if let Some(first) = seen.insert(key, n) {
                    errors.push(FieldError {
                        field: format!("rows[{n}].question"),
                        detail: format!("repeats row {first}'s question"),
                    });
                }
                good.push(r);
            }
            Err(p) => errors.push(FieldError {
                field: format!("rows[{n}].{}", p.field.unwrap_or_default()),
                detail: p.detail,
            }),
        }
    }
    if errors.is_empty() {
        Ok(good)
    } else {
        Err(Problem::invalid_fields(errors))
    }
}

/// What an import did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Imported {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
}

/// Adds or updates training rows from CSV (columns `data_type, question,
/// answer, category, priority, confidence_score, is_active`; a header row
/// first) or YAML (a list of rows with those keys): rows match the
/// tenant's rows by type and question. Every row is checked first: when any
/// is bad, every bad field of every row is named and nothing is written.
#[utoipa::path(post, path = "/tenants/{tenant}/training-data/import", tag = "training-data",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"), FormatQuery),
    request_body(content = String, content_type = "text/csv", description = "CSV with a header row, or YAML"),
    responses((status = 200, body = Imported), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn import(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Query<FormatQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    require(&caller.principal, Access::TenantAdmin)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Problem::bad_request("the body is not UTF-8 text"))?;
    let (rows, unreadable) = match format_of(&q, Some(&headers))? {
        Format::Csv => csv_rows(text)?,
        Format::Yaml => (yaml_rows(text)?, Vec::new()),
    };
    let rows = check(rows, unreadable)?;
    let mut done = Imported {
        created: 0,
        updated: 0,
        unchanged: 0,
    };
    for r in &rows {
        let write = TrainingWrite {
            data_type: &r.data_type,
            question: r.question.as_deref().unwrap_or_default(),
            answer: r.answer.as_deref().unwrap_or_default(),
            category: r.category.as_deref(),
            priority: r.priority,
            confidence_score: r.confidence_score,
            is_active: r.is_active,
        };
        match edits::upsert_training(&mut tx, tenant, &write).await? {
            Some(true) => done.created += 1,
            Some(false) => done.updated += 1,
            None => done.unchanged += 1,
        }
    }
    let changed = done.created + done.updated > 0;
    if changed {
        let summary = serde_json::json!({"rows": rows.len(), "created": done.created, "updated": done.updated});
        record_change(
            &mut tx,
            &caller,
            tenant,
            "training.import",
            &format!("{} rows", rows.len()),
            None,
            Some(&summary),
        )
        .await?;
    }
    tx.commit().await?;
    if changed {
        api.announce(tenant).await;
    }
    Ok(Json(done).into_response())
}

/// One exported row (the import's columns).
#[derive(Debug, Serialize)]
struct ExportRow<'a> {
    data_type: &'a str,
    question: &'a str,
    answer: &'a str,
    category: Option<&'a str>,
    priority: i32,
    confidence_score: f64,
    is_active: bool,
}

/// A tenant's training data as CSV (the default) or YAML, in the form the
/// import takes.
#[utoipa::path(get, path = "/tenants/{tenant}/training-data/export", tag = "training-data",
    params(("tenant" = String, Path, description = "The tenant's id or client phone"), FormatQuery),
    responses((status = 200, content_type = "text/csv", body = String), (status = 404, body = Problem)))]
pub async fn export(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Query<FormatQuery>,
) -> Result<Response, Problem> {
    let Scope { mut tx, tenant } = api.scope(&caller.principal, &tenant).await?;
    let format = format_of(&q, None)?;
    let rows: Vec<Training> = edits::training(&mut tx, tenant).await?;
    tx.commit().await?;
    let out: Vec<ExportRow<'_>> = rows
        .iter()
        .map(|r| ExportRow {
            data_type: &r.data_type,
            question: r.question.as_deref().unwrap_or_default(),
            answer: r.answer.as_deref().unwrap_or_default(),
            category: r.category.as_deref(),
            priority: r.priority,
            confidence_score: r.confidence_score,
            is_active: r.is_active,
        })
        .collect();
    let (body, kind, ext) = match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            for r in &out {
                w.serialize(r).map_err(|e| Problem::unavailable(&e))?;
            }
            if out.is_empty() {
                w.write_record(COLUMNS)
                    .map_err(|e| Problem::unavailable(&e))?;
            }
            let bytes = w
                .into_inner()
                .map_err(|e| Problem::unavailable(e.error()))?;
            (bytes, "text/csv; charset=utf-8", "csv")
        }
        Format::Yaml => (
            serde_yaml_ng::to_string(&out)
                .map_err(|e| Problem::unavailable(&e))?
                .into_bytes(),
            "application/yaml",
            "yaml",
        ),
    };
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"training-data-{tenant}.{ext}\""
    )) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_are_typed_and_every_bad_row_is_named() {
        let text = "data_type,question,answer,priority,is_active\n\
                    faq,Hours?,9 to 5,3,yes\n\
                    faqq,Where?,Nairobi,,\n\
                    faq,,No question,x,\n\
                    faq,Hours?,Again,,\n";
        let (rows, unreadable) = csv_rows(text).unwrap();
        assert_eq!(rows[0].1["priority"], 3);
        assert_eq!(rows[0].1["is_active"], true);
        let p = check(rows, unreadable).unwrap_err();
        let fields: Vec<&str> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["rows[3].data_type", "rows[4].priority", "rows[5].question"],
            "{p:?}"
        );
        let e = csv_rows("question,answer,colour\nq,a,red\n").unwrap_err();
        assert!(e.detail.contains("unknown column \"colour\""), "{e:?}");
        // Records of the wrong length are named too, every one of them.
        let (rows, unreadable) = csv_rows("question,answer\nq,a,extra\nq2,a2\nq3\n").unwrap();
        let p = check(rows, unreadable).unwrap_err();
        let fields: Vec<&str> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["rows[2]", "rows[4]"], "{p:?}");
    }

    #[test]
    fn yaml_takes_a_list_or_a_manifests_training_data() {
        let rows = yaml_rows("- question: Hours?\n  answer: 9 to 5\n").unwrap();
        assert_eq!(check(rows, Vec::new()).unwrap()[0].data_type, "faq");
        let rows = yaml_rows(
            "training_data:\n  - data_type: canned_reply\n    question: hi\n    answer: Hello!\n",
        )
        .unwrap();
        assert_eq!(
            check(rows, Vec::new()).unwrap()[0].data_type,
            "canned_reply"
        );
        assert!(yaml_rows("just text").is_err());
        let p = check(
            yaml_rows("- question: q\n  answer: a\n  confidence_score: 3\n").unwrap(),
            Vec::new(),
        )
        .unwrap_err();
        assert_eq!(p.field.as_deref(), Some("rows[1].confidence_score"));
    }
}
