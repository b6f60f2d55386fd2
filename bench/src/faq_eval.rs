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

use alphadome_responder::embed::{cosine, Embedder};
use alphadome_responder::matcher::{FaqEntry, FaqIndex};
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

/// One business's questions and entries embedded by the full model: the
/// entries' vectors, then each paraphrase's (with its expected entry) and
/// each out-of-scope question's.
struct Embedded {
    entries: Vec<Vec<f32>>,
    paraphrases: Vec<(Vec<f32>, usize)>,
    out_of_scope: Vec<Vec<f32>>,
    /// The lexical matcher's pick for each paraphrase and out-of-scope
    /// question (entry index), for the combination.
    lexical: (Vec<Option<usize>>, Vec<Option<usize>>),
}

/// The entry most similar to `q`, and its cosine.
fn nearest(entries: &[Vec<f32>], q: &[f32]) -> (usize, f32) {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| (i, cosine(e, q)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0))
}

fn embed_business(
    b: &Business,
    model: &Embedder,
    times: &mut Vec<f64>,
) -> anyhow::Result<Embedded> {
    let key_index: HashMap<&str, usize> = b
        .faq
        .iter()
        .enumerate()
        .map(|(i, e)| (e.key.as_str(), i))
        .collect();
    let questions: Vec<&str> = b.faq.iter().map(|e| e.question.as_str()).collect();
    let entries = model.embed(&questions)?;
    let mut one = |text: &str| -> anyhow::Result<Vec<f32>> {
        let start = Instant::now();
        let v = model.embed(&[text])?.pop().unwrap_or_default();
        times.push(start.elapsed().as_secs_f64() * 1e6);
        Ok(v)
    };
    let mut paraphrases = Vec::new();
    for p in &b.paraphrases {
        paraphrases.push((one(&p.text)?, key_index[p.expect.as_str()]));
    }
    let mut out_of_scope = Vec::new();
    for q in &b.out_of_scope {
        out_of_scope.push(one(q)?);
    }
    let index = FaqIndex::build(b.faq.iter().enumerate().map(|(i, e)| FaqEntry {
        id: Uuid::from_u128(i as u128 + 1),
        question: e.question.clone(),
        answer: e.answer.clone(),
        category: None,
        priority: 0,
        confidence: 1.0,
    }));
    let pick = |t: &str| index.best(t).map(|m| m.entry.id.as_u128() as usize - 1);
    let lexical = (
        b.paraphrases.iter().map(|p| pick(&p.text)).collect(),
        b.out_of_scope.iter().map(|q| pick(q)).collect(),
    );
    Ok(Embedded {
        entries,
        paraphrases,
        out_of_scope,
        lexical,
    })
}

/// Right answers and refusals over every business at cosine threshold
/// `t`: semantic alone, and lexical first (its match taken as it is) with
/// the model for what it did not answer.
fn at_threshold(all: &[Embedded], t: f32) -> (Tally, Tally) {
    let mut sem = Tally::default();
    let mut hyb = Tally::default();
    for e in all {
        for (n, (q, expect)) in e.paraphrases.iter().enumerate() {
            let (best, cos) = nearest(&e.entries, q);
            let semantic = (cos >= t).then_some(best);
            for (tally, pick) in [
                (&mut sem, semantic),
                (&mut hyb, e.lexical.0[n].or(semantic)),
            ] {
                tally.paraphrases += 1;
                match pick {
                    Some(p) if p == *expect => tally.right += 1,
                    Some(_) => tally.wrong += 1,
                    None => tally.fell_back += 1,
                }
            }
        }
        for (n, q) in e.out_of_scope.iter().enumerate() {
            let (_, cos) = nearest(&e.entries, q);
            let semantic = cos >= t;
            for (tally, answered) in [
                (&mut sem, semantic),
                (&mut hyb, e.lexical.1[n].is_some() || semantic),
            ] {
                tally.out_of_scope += 1;
                if !answered {
                    tally.refused += 1;
                }
            }
        }
    }
    (sem, hyb)
}

/// The full model's tier and the combination with the lexical matcher, at
/// a sweep of cosine thresholds.
pub(crate) fn run_semantic(path: &Path, model_dir: &Path) -> anyhow::Result<Vec<Line>> {
    let set = load(path)?;
    let start = Instant::now();
    let model = Embedder::load(model_dir)
        .with_context(|| format!("loading the model in {}", model_dir.display()))?;
    let loaded = start.elapsed();
    let mut times = Vec::new();
    let embedded = set
        .businesses
        .iter()
        .map(|b| embed_business(b, &model, &mut times))
        .collect::<anyhow::Result<Vec<_>>>()?;
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    println!(
        "\n## faq-eval: the full model (all-MiniLM-L6-v2, entries embedded by their question; loaded in {:.1} s; {:.0} µs median per message embedded alone)\n",
        loaded.as_secs_f64(),
        median
    );
    println!("| cosine threshold | model alone: right | wrong | refused out of scope | lexical, then the model: right | wrong | refused |");
    println!("|---|---|---|---|---|---|---|");
    let mut best: Option<(f32, Tally, Tally)> = None;
    for step in 0..=8 {
        let t = 0.30 + 0.05 * step as f32;
        let (sem, hyb) = at_threshold(&embedded, t);
        println!(
            "| {t:.2} | {:.1} % | {} | {:.1} % | {:.1} % | {} | {:.1} % |",
            sem.top1(),
            sem.wrong,
            sem.rejection(),
            hyb.top1(),
            hyb.wrong,
            hyb.rejection()
        );
        // The threshold with the best worse-of-the-two for the combination.
        let score = hyb.top1().min(hyb.rejection());
        if best
            .as_ref()
            .is_none_or(|(_, _, h)| score > h.top1().min(h.rejection()))
        {
            best = Some((t, sem, hyb));
        }
    }
    let Some((t, sem, hyb)) = best else {
        return Ok(Vec::new());
    };
    Ok(vec![
        Line::new(
            format!("FAQ paraphrases answered right (model alone, cosine {t:.2})"),
            sem.top1(),
            "%",
            format!("out of scope refused {:.1} %", sem.rejection()),
        ),
        Line::new(
            format!("FAQ paraphrases answered right (lexical, then model at {t:.2})"),
            hyb.top1(),
            "%",
            format!("out of scope refused {:.1} %", hyb.rejection()),
        ),
        Line::new(
            "embedding one message (full model)",
            median,
            "µs",
            String::new(),
        ),
    ])
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
