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
