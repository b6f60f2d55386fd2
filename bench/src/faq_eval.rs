//! How well the FAQ matcher understands customers: the labelled set in
//! `bench/data/faq-eval.yaml` (several businesses' FAQs, questions phrased
//! the way customers write them, each labelled with the entry that answers
//! it, and questions no entry answers) run through the responder's own
//! matcher. Reports, per business and overall, the share of paraphrases
//! answered with the right entry (top-1), answered with a wrong one, or
//! sent the fallback, the share of out-of-scope questions refused, and the
//! matcher's time per message. No service is needed.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use alphadome_responder::embed::Embedder;
use alphadome_responder::matcher::{FaqEntry, FaqIndex};
use alphadome_responder::semantic::{self, Calibration, SemanticIndex, CALIBRATION};
use anyhow::Context;
use serde::Deserialize;
use uuid::Uuid;

use crate::report::Line;

/// The labelled set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvalSet {
    pub(crate) businesses: Vec<Business>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Business {
    pub(crate) name: String,
    pub(crate) faq: Vec<Entry>,
    pub(crate) paraphrases: Vec<Paraphrase>,
    pub(crate) out_of_scope: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) question: String,
    pub(crate) answer: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Paraphrase {
    pub(crate) text: String,
    pub(crate) expect: String,
}

/// The set in the repository.
pub(crate) fn default_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/faq-eval.yaml")
}

/// Reads the set and checks its labels: every key unique within its
/// business, every label a key of its business.
pub(crate) fn load(path: &Path) -> anyhow::Result<EvalSet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let set: EvalSet =
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    for b in &set.businesses {
        let mut keys = std::collections::HashSet::new();
        for e in &b.faq {
            anyhow::ensure!(
                keys.insert(&e.key),
                "{}: key {:?} appears twice",
                b.name,
                e.key
            );
        }
        for p in &b.paraphrases {
            anyhow::ensure!(
                keys.contains(&p.expect),
                "{}: {:?} expects {:?}, which is no entry of it",
                b.name,
                p.text,
                p.expect
            );
        }
    }
    Ok(set)
}

/// What one business's questions gave.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) paraphrases: usize,
    pub(crate) right: usize,
    pub(crate) wrong: usize,
    pub(crate) fell_back: usize,
    pub(crate) out_of_scope: usize,
    pub(crate) refused: usize,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.paraphrases += o.paraphrases;
        self.right += o.right;
        self.wrong += o.wrong;
        self.fell_back += o.fell_back;
        self.out_of_scope += o.out_of_scope;
        self.refused += o.refused;
    }

    pub(crate) fn top1(&self) -> f64 {
        pct(self.right, self.paraphrases)
    }

    pub(crate) fn rejection(&self) -> f64 {
        pct(self.refused, self.out_of_scope)
    }
}

fn pct(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// Runs one business's questions through its index; `misses` collects the
/// questions answered wrongly or not at all, and the out-of-scope ones
/// answered.
fn evaluate(b: &Business, misses: &mut Vec<String>, times: &mut Vec<f64>) -> Tally {
    let ids: HashMap<&str, Uuid> = b
        .faq
        .iter()
        .enumerate()
        .map(|(i, e)| (e.key.as_str(), Uuid::from_u128(i as u128 + 1)))
        .collect();
    let keys: HashMap<Uuid, &str> = ids.iter().map(|(k, v)| (*v, *k)).collect();
    let index = FaqIndex::build(b.faq.iter().map(|e| FaqEntry {
        id: ids[e.key.as_str()],
        question: e.question.clone(),
        answer: e.answer.clone(),
        category: None,
        priority: 0,
        confidence: 1.0,
    }));
    let mut t = Tally {
        paraphrases: b.paraphrases.len(),
        out_of_scope: b.out_of_scope.len(),
        ..Tally::default()
    };
    let mut best = |text: &str| {
        let start = Instant::now();
        let found = index.best(text).map(|m| m.entry.id);
        times.push(start.elapsed().as_secs_f64() * 1e6);
        found
    };
    for p in &b.paraphrases {
        match best(&p.text) {
            Some(id) if keys.get(&id) == Some(&p.expect.as_str()) => t.right += 1,
            Some(id) => {
                t.wrong += 1;
                misses.push(format!(
                    "{}: {:?} answered with {} (expected {})",
                    b.name,
                    p.text,
                    keys.get(&id).unwrap_or(&"?"),
                    p.expect
                ));
            }
            None => {
                t.fell_back += 1;
                misses.push(format!(
                    "{}: {:?} fell back (expected {})",
                    b.name, p.text, p.expect
                ));
            }
        }
    }
    for q in &b.out_of_scope {
        match best(q) {
            None => t.refused += 1,
            Some(id) => misses.push(format!(
                "{}: out of scope {:?} answered with {}",
                b.name,
                q,
                keys.get(&id).unwrap_or(&"?")
            )),
        }
    }
    t
}

/// Runs the set and prints its table; `show` prints every miss too.
pub(crate) fn run(path: &Path, show: bool) -> anyhow::Result<Vec<Line>> {
    let set = load(path)?;
    let mut misses = Vec::new();
    let mut times = Vec::new();
    let mut all = Tally::default();
    println!(
        "\n## faq-eval: {} ({} businesses), the lexical matcher\n",
        path.display(),
        set.businesses.len()
    );
    println!("| business | entries | paraphrases | top-1 right | wrong entry | fell back | out of scope | refused |");
    println!("|---|---|---|---|---|---|---|---|");
    for b in &set.businesses {
        let t = evaluate(b, &mut misses, &mut times);
        println!(
            "| {} | {} | {} | {:.1} % | {} | {} | {} | {:.1} % |",
            b.name,
            b.faq.len(),
            t.paraphrases,
            t.top1(),
            t.wrong,
            t.fell_back,
            t.out_of_scope,
            t.rejection()
        );
        all.add(&t);
    }
    println!(
        "| all | | {} | {:.1} % | {} | {} | {} | {:.1} % |",
        all.paraphrases,
        all.top1(),
        all.wrong,
        all.fell_back,
        all.out_of_scope,
        all.rejection()
    );
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let p99 = times
        .get((times.len() * 99 / 100).min(times.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    println!("\nmatcher time per message: median {median:.1} µs, p99 {p99:.1} µs");
    if show {
        println!();
        for m in &misses {
            println!("- {m}");
        }
    }
    Ok(vec![
        Line::new(
            "FAQ paraphrases answered right (lexical)",
            all.top1(),
            "%",
            format!("{} of {}", all.right, all.paraphrases),
        ),
        Line::new(
            "out-of-scope questions refused (lexical)",
            all.rejection(),
            "%",
            format!("{} of {}", all.refused, all.out_of_scope),
        ),
    ])
}

/// One business's questions scored against its entries: for each
/// paraphrase (with its expected entry) and each out-of-scope question,
/// the lexical scores of every entry and the semantic ones.
struct Scored {
    paraphrases: Vec<(Query, usize)>,
    out_of_scope: Vec<Query>,
}

struct Query {
    lexical: Vec<f32>,
    /// The semantic scores per entry, for each answer weight of the grid.
    semantic: Vec<Vec<f32>>,
    /// The static tier's scores per entry (answer weight 1).
    fast: Vec<f32>,
}

/// Each token's static vector, computed once through the model.
struct TokenTable<'m> {
    model: &'m Embedder,
    vectors: HashMap<u32, Vec<f32>>,
}

impl TokenTable<'_> {
    fn vector(&mut self, text: &str) -> anyhow::Result<Vec<f32>> {
        let ids = self.model.token_ids(text)?;
        let missing: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|t| !self.vectors.contains_key(t))
            .collect::<std::collections::BTreeSet<u32>>()
            .into_iter()
            .collect();
        for chunk in missing.chunks(256) {
            for (t, v) in chunk.iter().zip(self.model.token_vectors(chunk)?) {
                self.vectors.insert(*t, v);
            }
        }
        Ok(alphadome_responder::embed::static_vector(
            ids.iter()
                .filter_map(|t| self.vectors.get(t).map(Vec::as_slice)),
        ))
    }
}

/// Answer weights tried by the calibration.
const ANSWER_WEIGHTS: [f32; 4] = [0.0, 0.8, 0.9, 1.0];

fn score_business(
    b: &Business,
    model: &Embedder,
    times: &mut Vec<f64>,
    weights: &[f32],
) -> anyhow::Result<Scored> {
    let key_index: HashMap<&str, usize> = b
        .faq
        .iter()
        .enumerate()
        .map(|(i, e)| (e.key.as_str(), i))
        .collect();
    let (q, a): (Vec<String>, Vec<String>) = b
        .faq
        .iter()
        .map(|e| {
            let [q, a] = semantic::entry_texts(&e.question, &e.answer);
            (q, a)
        })
        .unzip();
    let qv = model.embed(&q.iter().map(String::as_str).collect::<Vec<_>>())?;
    let av = model.embed(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    let index = SemanticIndex::new(&qv, &av);
    let mut table = TokenTable {
        model,
        vectors: HashMap::new(),
    };
    let qs = q
        .iter()
        .map(|t| table.vector(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let as_ = a
        .iter()
        .map(|t| table.vector(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let centre = semantic::centre_of(&qs);
    let qs: Vec<Vec<f32>> = qs.iter().map(|v| semantic::centred(v, &centre)).collect();
    let as_: Vec<Vec<f32>> = as_.iter().map(|v| semantic::centred(v, &centre)).collect();
    let fast_index = SemanticIndex::new(&qs, &as_);
    let lexical = FaqIndex::build(b.faq.iter().enumerate().map(|(i, e)| FaqEntry {
        id: Uuid::from_u128(i as u128 + 1),
        question: e.question.clone(),
        answer: e.answer.clone(),
        category: None,
        priority: 0,
        confidence: 1.0,
    }));
    let mut query = |text: &str| -> anyhow::Result<Query> {
        let start = Instant::now();
        let v = model.embed(&[text])?.pop().unwrap_or_default();
        times.push(start.elapsed().as_secs_f64() * 1e6);
        let semantic = weights
            .iter()
            .map(|&answer_weight| {
                index.scores(
                    &v,
                    &Calibration {
                        answer_weight,
                        ..CALIBRATION
                    },
                )
            })
            .collect();
        let fv = semantic::centred(&table.vector(text)?, &centre);
        Ok(Query {
            lexical: lexical.scores(text),
            semantic,
            fast: fast_index.scores(
                &fv,
                &Calibration {
                    answer_weight: 1.0,
                    ..CALIBRATION
                },
            ),
        })
    };
    let mut paraphrases = Vec::new();
    for p in &b.paraphrases {
        paraphrases.push((query(&p.text)?, key_index[p.expect.as_str()]));
    }
    let mut out_of_scope = Vec::new();
    for q in &b.out_of_scope {
        out_of_scope.push(query(q)?);
    }
    Ok(Scored {
        paraphrases,
        out_of_scope,
    })
}

/// The responder's choice for one question (as `TenantContext::answer`
/// makes it): a sure lexical match alone, else the combined scores; and
/// whether the model was needed.
fn pick(q: &Query, weight: usize, cal: &Calibration) -> (Option<usize>, bool) {
    let lexical_best = q
        .lexical
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, &s)| (i, s));
    if let Some((i, s)) = lexical_best.filter(|&(_, s)| s >= semantic::LEXICAL_SURE) {
        let _ = s;
        return (Some(i), false);
    }
    let combined = semantic::combine(&q.lexical, &q.semantic[weight], cal);
    (semantic::choose(&combined, cal).map(|(i, _)| i), true)
}

/// The tally of `businesses` with `pick` choosing (see [`pick`]), and how
/// many questions reached the model.
fn tally(businesses: &[&Scored], pick: impl Fn(&Query) -> (Option<usize>, bool)) -> (Tally, usize) {
    let mut t = Tally::default();
    let mut model = 0;
    for b in businesses {
        for (q, expect) in &b.paraphrases {
            let (p, m) = pick(q);
            model += m as usize;
            t.paraphrases += 1;
            match p {
                Some(p) if p == *expect => t.right += 1,
                Some(_) => t.wrong += 1,
                None => t.fell_back += 1,
            }
        }
        for q in &b.out_of_scope {
            let (p, m) = pick(q);
            model += m as usize;
            t.out_of_scope += 1;
            if p.is_none() {
                t.refused += 1;
            }
        }
    }
    (t, model)
}

/// The static tier's bands: a static best of at least `accept`, leading
/// the next by `margin`, answers; below `reject`, the fallback; between,
/// the full model.
#[derive(Debug, Clone, Copy)]
struct Bands {
    accept: f32,
    margin: f32,
    reject: f32,
}

/// [`pick`] with the static tier before the full model.
fn pick_tiered(q: &Query, weight: usize, cal: &Calibration, b: &Bands) -> (Option<usize>, bool) {
    let lexical_best = q
        .lexical
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1));
    if let Some((i, _)) = lexical_best.filter(|&(_, &s)| s >= semantic::LEXICAL_SURE) {
        return (Some(i), false);
    }
    let mut order: Vec<(usize, f32)> = q.fast.iter().copied().enumerate().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    let best = order.first().copied().unwrap_or((0, 0.0));
    let second = order.get(1).map_or(0.0, |s| s.1);
    if best.1 >= b.accept && best.1 - second >= b.margin {
        return (Some(best.0), false);
    }
    if best.1 < b.reject {
        return (None, false);
    }
    pick(q, weight, cal)
}

/// Every calibration of the grid: (answer weight index, calibration).
fn grid() -> Vec<(usize, Calibration)> {
    let mut out = Vec::new();
    for (w, &answer_weight) in ANSWER_WEIGHTS.iter().enumerate() {
        for lw in [0.0f32, 0.1, 0.2, 0.3, 0.4, 0.5] {
            for t in 0..=16 {
                for margin in [0.0f32, 0.01, 0.02, 0.03, 0.05, 0.08] {
                    out.push((
                        w,
                        Calibration {
                            lexical_weight: lw,
                            answer_weight,
                            threshold: 0.30 + 0.025 * t as f32,
                            margin,
                        },
                    ));
                }
            }
        }
    }
    out
}

/// The calibration of the grid with the best worse-of-the-two (right
/// answers, refusals) on `businesses`; with `refusal_floor`, the most
/// right answers among those refusing at least that share.
fn calibrate(businesses: &[&Scored], refusal_floor: Option<f64>) -> (usize, Calibration, Tally) {
    let mut best: Option<(usize, Calibration, Tally)> = None;
    let value = |t: &Tally| match refusal_floor {
        Some(f) if t.rejection() >= f => t.top1(),
        Some(_) => -1.0,
        None => t.top1().min(t.rejection()),
    };
    for (w, cal) in grid() {
        let (t, _) = tally(businesses, |q| pick(q, w, &cal));
        let score = value(&t);
        if best.as_ref().is_none_or(|(_, _, b)| score > value(b)) {
            best = Some((w, cal, t));
        }
    }
    best.unwrap_or((0, CALIBRATION, Tally::default()))
}

/// The responder's matching with the model (the calibration in use), the
/// best calibration of a grid over the whole set, and the same calibrated
/// on all businesses but one and measured on that one (held out).
pub(crate) fn run_semantic(path: &Path, model_dir: &Path) -> anyhow::Result<Vec<Line>> {
    let set = load(path)?;
    let start = Instant::now();
    let model = Embedder::load(model_dir)
        .with_context(|| format!("loading the model in {}", model_dir.display()))?;
    let loaded = start.elapsed();
    let mut times = Vec::new();
    let mut weights = ANSWER_WEIGHTS.to_vec();
    weights.push(CALIBRATION.answer_weight);
    let scored = set
        .businesses
        .iter()
        .map(|b| score_business(b, &model, &mut times, &weights))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let all: Vec<&Scored> = scored.iter().collect();
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let (used, model_share) = tally(&all, |q| pick(q, weights.len() - 1, &CALIBRATION));
    let questions = used.paraphrases + used.out_of_scope;
    println!(
        "\n## faq-eval: lexical and the full model combined (all-MiniLM-L6-v2; loaded in {:.1} s; {:.0} µs median per message embedded alone)\n",
        loaded.as_secs_f64(),
        median
    );
    println!("| calibration | lexical weight | answer weight | threshold | margin | right | wrong | fell back | refused out of scope | reached the model |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let row = |name: &str, c: &Calibration, t: &Tally, m: Option<usize>| {
        println!(
            "| {name} | {:.1} | {:.1} | {:.3} | {:.2} | {:.1} % | {} | {} | {:.1} % | {} |",
            c.lexical_weight,
            c.answer_weight,
            c.threshold,
            c.margin,
            t.top1(),
            t.wrong,
            t.fell_back,
            t.rejection(),
            m.map(|m| format!("{:.1} %", pct(m, questions)))
                .unwrap_or_default()
        )
    };
    row("in use (responder)", &CALIBRATION, &used, Some(model_share));
    // The static tier's bands: the fewest questions reaching the full
    // model while losing at most 2 points of right answers and refusals.
    let w = weights.len() - 1;
    let mut tiers: Vec<(Bands, Tally, usize)> = Vec::new();
    for a in 0..=12 {
        for margin in [0.0f32, 0.02, 0.05, 0.1] {
            for r in 0..=12 {
                let b = Bands {
                    accept: 0.3 + 0.05 * a as f32,
                    margin,
                    reject: 0.05 * r as f32,
                };
                let (t, m) = tally(&all, |q| pick_tiered(q, w, &CALIBRATION, &b));
                tiers.push((b, t, m));
            }
        }
    }
    let best_tier = tiers
        .iter()
        .filter(|(_, t, _)| {
            t.top1() >= used.top1() - 2.0 && t.rejection() >= used.rejection() - 2.0
        })
        .min_by_key(|(_, _, m)| *m);
    println!();
    println!("| static tier | accept ≥ | margin | reject < | right | wrong | fell back | refused out of scope | reached the full model |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let trow = |name: &str, b: &Bands, t: &Tally, m: usize| {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.1} % | {} | {} | {:.1} % | {:.1} % |",
            b.accept,
            b.margin,
            b.reject,
            t.top1(),
            t.wrong,
            t.fell_back,
            t.rejection(),
            pct(m, questions)
        )
    };
    let mut lines = Vec::new();
    if let Some((b, t, m)) = best_tier {
        trow("fewest reaching the full model, within 2 points", b, t, *m);
        lines.push(Line::new(
            "static tier before the full model (measured, not on the responder's path)",
            pct(*m, questions),
            "% reach the full model",
            format!(
                "accept >= {:.2} leading by {:.2}, reject < {:.2}: right {:.1} %, refused {:.1} %",
                b.accept,
                b.margin,
                b.reject,
                t.top1(),
                t.rejection()
            ),
        ));
    }
    println!();
    let (_, best_cal, best_t) = calibrate(&all, None);
    row("best of the grid, whole set", &best_cal, &best_t, None);
    let (_, safe_cal, safe_t) = calibrate(&all, Some(85.0));
    row("most right with ≥ 85 % refused", &safe_cal, &safe_t, None);
    let mut held = Tally::default();
    for (n, b) in set.businesses.iter().enumerate() {
        let others: Vec<&Scored> = scored
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != n)
            .map(|(_, s)| s)
            .collect();
        let (w, cal, _) = calibrate(&others, Some(85.0));
        let (t, _) = tally(&[&scored[n]], |q| pick(q, w, &cal));
        row(&format!("held out: {}", b.name), &cal, &t, None);
        held.add(&t);
    }
    println!(
        "| held out, all | | | | | {:.1} % | {} | {} | {:.1} % | |",
        held.top1(),
        held.wrong,
        held.fell_back,
        held.rejection()
    );
    Ok([
        Line::new(
            "FAQ paraphrases answered right (lexical, then the model: as the responder)",
            used.top1(),
            "%",
            format!(
                "out of scope refused {:.1} %; {:.1} % of questions reached the model",
                used.rejection(),
                pct(model_share, questions)
            ),
        ),
        Line::new(
            "FAQ paraphrases answered right (calibrated on the other businesses)",
            held.top1(),
            "%",
            format!("out of scope refused {:.1} %", held.rejection()),
        ),
        Line::new(
            "embedding one message (full model)",
            median,
            "µs",
            String::new(),
        ),
    ]
    .into_iter()
    .chain(lines)
    .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_in_the_repository_is_well_labelled_and_large_enough() {
        let set = load(&default_path()).unwrap();
        assert!(set.businesses.len() >= 4);
        let paraphrases: usize = set.businesses.iter().map(|b| b.paraphrases.len()).sum();
        let out: usize = set.businesses.iter().map(|b| b.out_of_scope.len()).sum();
        assert!(paraphrases >= 200, "{paraphrases}");
        assert!(out >= 100, "{out}");
        for b in &set.businesses {
            for e in &b.faq {
                let n = b.paraphrases.iter().filter(|p| p.expect == e.key).count();
                assert!(n >= 2, "{}: {} has {n} paraphrases", b.name, e.key);
            }
        }
    }

    #[test]
    fn a_wrong_label_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("faq-eval-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("set.yaml");
        std::fs::write(
            &f,
            "businesses:\n  - name: Shop\n    faq:\n      - key: hours\n        question: Hours?\n        answer: 9 to 5\n    paraphrases:\n      - text: when open\n        expect: hour\n    out_of_scope: []\n",
        )
        .unwrap();
        let e = load(&f).unwrap_err().to_string();
        assert!(e.contains("\"hour\", which is no entry"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
