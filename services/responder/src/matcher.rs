//! Matching a customer's message against a tenant's FAQ and canned replies.
//!
//! Questions and messages are reduced to bags of normalised terms (lower
//! case, no punctuation or accents, filler words dropped, plurals and
//! common suffixes folded), so case, punctuation, filler and word order do
//! not matter. Terms are weighted by inverse document frequency within the
//! tenant's own entries; a message term that is not in the vocabulary is
//! matched to vocabulary terms within one edit (a deletion-neighbourhood
//! index, as in SymSpell), so a typo costs a little score instead of the
//! match. The score is the cosine between the two weighted bags; below
//! [`THRESHOLD`] nothing matches. Ties within [`TIE_BAND`] are broken by
//! `priority`, then `confidence_score`.
//!
//! Each tenant has its own index built from its own rows only, so no other
//! tenant's data can ever answer.

use std::collections::HashMap;

use uuid::Uuid;

/// Minimum score for a match.
pub const THRESHOLD: f64 = 0.5;
/// Scores this close count as equally relevant.
pub const TIE_BAND: f64 = 0.05;
/// Weight of a term matched through a typo.
const FUZZY_WEIGHT: f64 = 0.8;

/// One answerable row (FAQ or canned reply).
#[derive(Debug, Clone)]
pub struct FaqEntry {
    pub id: Uuid,
    pub question: String,
    pub answer: String,
    pub category: Option<String>,
    pub priority: i32,
    pub confidence: f64,
}

/// A match and how good it is.
#[derive(Debug, Clone, Copy)]
pub struct Match<'a> {
    pub entry: &'a FaqEntry,
    pub score: f64,
}

/// The per-tenant search index.
#[derive(Debug, Default)]
pub struct FaqIndex {
    entries: Vec<FaqEntry>,
    /// term id -> (entry, weight) postings.
    postings: Vec<Vec<(u32, f32)>>,
    /// term -> term id.
    vocab: HashMap<String, u32>,
    /// one-deletion variant -> term ids.
    deletes: HashMap<String, Vec<u32>>,
    /// term id -> idf.
    idf: Vec<f32>,
    /// entry -> norm of its weighted bag.
    norms: Vec<f32>,
    /// The mean idf: what an unknown message term weighs.
    mean_idf: f32,
}

const FILLER: &[&str] = &[
    "a", "an", "the", "is", "are", "am", "was", "were", "be", "been", "do", "does", "did", "i",
    "me", "my", "we", "our", "us", "you", "your", "yours", "u", "ur", "it", "its", "this", "that",
    "these", "those", "to", "of", "in", "on", "at", "for", "with", "and", "or", "so", "if", "can",
    "could", "would", "should", "will", "shall", "may", "might", "please", "pls", "plz", "kindly",
    "tell", "know", "want", "wanted", "like", "need", "just", "some", "any", "there", "what",
    "whats", "which", "who", "whom", "how", "hows", "when", "where", "wheres", "why", "have",
    "has", "had", "get", "got", "about", "also", "too", "very", "really", "ok", "okay", "um", "uh",
    "hey", "dear", "sir", "madam", "maam", "guys", "anyone", "someone", "let", "give", "am", "im",
    "id", "ill", "youre", "them", "they", "their", "from", "by", "as", "into",
];

/// Whether `word` (lower case) is a filler word the matcher ignores.
pub fn is_filler(word: &str) -> bool {
    FILLER.contains(&word)
}

fn fold_char(c: char) -> Option<char> {
    let c = c.to_lowercase().next().unwrap_or(c);
    Some(match c {
        'a'..='z' | '0'..='9' => c,
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
        'ç' => 'c',
        'è' | 'é' | 'ê' | 'ë' => 'e',
        'ì' | 'í' | 'î' | 'ï' => 'i',
        'ñ' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' => 'o',
        'ù' | 'ú' | 'û' | 'ü' => 'u',
        '\'' | '’' => return None,
        c if c.is_alphanumeric() => c,
        _ => ' ',
    })
}

fn stem(word: &str) -> String {
    let w = word;
    let n = w.len();
    let s = if n > 4 && w.ends_with("ies") {
        format!("{}y", &w[..n - 3])
    } else if n > 5 && w.ends_with("ing") {
        w[..n - 3].to_owned()
    } else if n > 4
        && (w.ends_with("ses") || w.ends_with("xes") || w.ends_with("ches") || w.ends_with("shes"))
    {
        w[..n - 2].to_owned()
    } else if n > 3 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") {
        w[..n - 1].to_owned()
    } else {
        w.to_owned()
    };
    s
}

/// Longest word considered (longer ones are noise, and would make the
/// deletion neighbourhood costly).
const MAX_WORD_CHARS: usize = 40;
/// Characters of a message considered.
const MAX_MESSAGE_CHARS: usize = 1000;

/// Normalised terms of `text`, filler removed, deduplicated, in order.
pub fn terms(text: &str) -> Vec<String> {
    let folded: String = text
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .filter_map(fold_char)
        .collect();
    let mut out: Vec<String> = Vec::new();
    for word in folded.split_whitespace() {
        if FILLER.contains(&word) || word.chars().count() > MAX_WORD_CHARS {
            continue;
        }
        let t = stem(word);
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        // A message of filler only ("hi", "how are you") still has to match
        // something like a greeting: keep its words.
        for word in folded
            .split_whitespace()
            .filter(|w| w.chars().count() <= MAX_WORD_CHARS)
        {
            let t = stem(word);
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

fn deletions(term: &str) -> Vec<String> {
    let chars: Vec<char> = term.chars().collect();
    (0..chars.len())
        .map(|i| {
            chars
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, c)| c)
                .collect()
        })
        .collect()
}

impl FaqIndex {
    /// Builds the index of `entries`.
    pub fn build(entries: impl IntoIterator<Item = FaqEntry>) -> Self {
        let entries: Vec<FaqEntry> = entries.into_iter().collect();
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let mut doc_terms: Vec<Vec<u32>> = Vec::with_capacity(entries.len());
        for e in &entries {
            let ids = terms(&e.question)
                .into_iter()
                .map(|t| {
                    let next = vocab.len() as u32;
                    *vocab.entry(t).or_insert(next)
                })
                .collect();
            doc_terms.push(ids);
        }
        let mut df = vec![0u32; vocab.len()];
        for ids in &doc_terms {
            for &t in ids {
                df[t as usize] += 1;
            }
        }
        let n = entries.len().max(1) as f32;
        let idf: Vec<f32> = df
            .iter()
            .map(|&d| (1.0 + n / d.max(1) as f32).ln())
            .collect();
        let mut postings = vec![Vec::new(); vocab.len()];
        let mut norms = Vec::with_capacity(entries.len());
        for (doc, ids) in doc_terms.iter().enumerate() {
            let mut sq = 0.0f32;
            for &t in ids {
                let w = idf[t as usize];
                postings[t as usize].push((doc as u32, w));
                sq += w * w;
            }
            norms.push(sq.sqrt());
        }
        let mut deletes: HashMap<String, Vec<u32>> = HashMap::new();
        for (term, &id) in &vocab {
            if term.chars().count() >= 4 {
                for d in deletions(term) {
                    deletes.entry(d).or_default().push(id);
                }
            }
        }
        let mean_idf = idf.iter().sum::<f32>() / idf.len().max(1) as f32;
        Self {
            entries,
            postings,
            vocab,
            deletes,
            idf,
            norms,
            mean_idf,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the index has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Vocabulary terms within one edit of `term` (which is not itself in the vocabulary).
    fn fuzzy(&self, term: &str) -> Vec<u32> {
        let len = term.chars().count();
        if len < 3 {
            return Vec::new();
        }
        let mut found: Vec<u32> = Vec::new();
        // A deletion from the message term gives a vocabulary term (insertion typo).
        for d in deletions(term).into_iter().filter(|_| len >= 4) {
            if let Some(&id) = self.vocab.get(&d) {
                found.push(id);
            }
            // Same deletion on both sides (substitution, transposition).
            if let Some(ids) = self.deletes.get(&d) {
                found.extend(ids);
            }
        }
        // The term is a deletion of a vocabulary term (omission typo).
        if let Some(ids) = self.deletes.get(term) {
            found.extend(ids);
        }
        found.sort_unstable();
        found.dedup();
        found
    }

    /// The best entry for `message`, if any scores at least [`THRESHOLD`].
    pub fn best(&self, message: &str) -> Option<Match<'_>> {
        self.ranked(message).into_iter().next()
    }

    /// Entries scoring at least [`THRESHOLD`], best first.
    pub fn ranked(&self, message: &str) -> Vec<Match<'_>> {
        self.ranked_above(message, THRESHOLD)
    }

    /// Entries scoring at least `threshold`, best first (a lower threshold
    /// than [`THRESHOLD`] finds context for an LLM rather than an answer).
    pub fn ranked_above(&self, message: &str, threshold: f64) -> Vec<Match<'_>> {
        let mut out: Vec<Match<'_>> = self
            .scores(message)
            .into_iter()
            .enumerate()
            .filter(|&(_, score)| score > 0.0 && score as f64 >= threshold)
            .map(|(doc, score)| Match {
                entry: &self.entries[doc],
                score: (score as f64).min(1.0),
            })
            .collect();
        rank(&mut out);
        out
    }

    /// Every entry's lexical score for `message`, in the order of
    /// [`FaqIndex::entries`] (0 for an entry sharing no term).
    pub fn scores(&self, message: &str) -> Vec<f32> {
        let mut scores = vec![0.0f32; self.entries.len()];
        if self.entries.is_empty() {
            return scores;
        }
        let mut query_sq = 0.0f32;
        for term in terms(message) {
            let (ids, weight): (Vec<u32>, f32) = match self.vocab.get(&term) {
                Some(&id) => (vec![id], 1.0),
                None => (self.fuzzy(&term), FUZZY_WEIGHT as f32),
            };
            if ids.is_empty() {
                query_sq += self.mean_idf * self.mean_idf;
                continue;
            }
            let q = ids
                .iter()
                .map(|&t| self.idf[t as usize])
                .fold(0.0f32, f32::max);
            query_sq += q * q;
            for &t in &ids {
                for &(doc, w) in &self.postings[t as usize] {
                    scores[doc as usize] += weight * w * w;
                }
            }
        }
        let qn = query_sq.sqrt();
        for (doc, s) in scores.iter_mut().enumerate() {
            let norm = self.norms[doc] * qn;
            *s = if norm > 0.0 {
                (*s / norm).min(1.0)
            } else {
                0.0
            };
        }
        scores
    }

    /// The entries, in index order.
    pub fn entries(&self) -> &[FaqEntry] {
        &self.entries
    }
}

/// Orders matches by score; scores within [`TIE_BAND`] of the band's top
/// are ordered by `priority`, then `confidence`.
pub fn rank(matches: &mut [Match<'_>]) {
    matches.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut band = 0u32;
    let mut band_top = f64::INFINITY;
    let mut keyed: Vec<(u32, Match<'_>)> = Vec::with_capacity(matches.len());
    for m in matches.iter() {
        if band_top - m.score > TIE_BAND {
            if band_top.is_finite() {
                band += 1;
            }
            band_top = m.score;
        }
        keyed.push((band, *m));
    }
    keyed.sort_by(|(band_a, a), (band_b, b)| {
        band_a
            .cmp(band_b)
            .then(b.entry.priority.cmp(&a.entry.priority))
            .then(b.entry.confidence.total_cmp(&a.entry.confidence))
            .then(b.score.total_cmp(&a.score))
            .then(a.entry.id.cmp(&b.entry.id))
    });
    for (slot, (_, m)) in matches.iter_mut().zip(keyed) {
        *slot = m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(q: &str, a: &str, priority: i32, confidence: f64) -> FaqEntry {
        FaqEntry {
            id: Uuid::new_v4(),
            question: q.into(),
            answer: a.into(),
            category: None,
            priority,
            confidence,
        }
    }

    fn shop() -> FaqIndex {
        FaqIndex::build([
            entry("What instruments do you sell?", "guitars", 10, 0.9),
            entry("What are your opening hours?", "hours", 10, 0.9),
            entry("Where is your shop located?", "location", 5, 0.9),
            entry("Do you deliver outside Nairobi?", "delivery", 5, 0.9),
            entry("Can I pay with M-Pesa?", "mpesa", 8, 0.9),
            entry("Do you offer guitar lessons?", "lessons", 6, 0.9),
            entry("Do you repair instruments?", "repairs", 6, 0.9),
            entry("hello", "greeting", 1, 1.0),
        ])
    }

    #[test]
    fn robust_to_case_punctuation_order_and_filler() {
        let i = shop();
        assert_eq!(
            i.best("WHAT INSTRUMENTS DO YOU SELL").unwrap().entry.answer,
            "guitars"
        );
        assert_eq!(
            i.best("instruments... sell??").unwrap().entry.answer,
            "guitars"
        );
        assert_eq!(
            i.best("please tell me, which instruments do you sell")
                .unwrap()
                .entry
                .answer,
            "guitars"
        );
        assert_eq!(i.best("sell instruments?").unwrap().entry.answer, "guitars");
        assert_eq!(
            i.best("your opening hours please").unwrap().entry.answer,
            "hours"
        );
        assert_eq!(i.best("Hello!").unwrap().entry.answer, "greeting");
    }

    #[test]
    fn robust_to_typos() {
        let i = shop();
        assert_eq!(
            i.best("what instrumnets do you sel").unwrap().entry.answer,
            "guitars"
        );
        assert_eq!(i.best("openning hours").unwrap().entry.answer, "hours");
        assert_eq!(
            i.best("do you delivr outside nairobi")
                .unwrap()
                .entry
                .answer,
            "delivery"
        );
        assert_eq!(i.best("gutiar lessons").unwrap().entry.answer, "lessons");
    }

    #[test]
    fn huge_messages_stay_cheap() {
        let i = shop();
        let start = std::time::Instant::now();
        assert!(i.best(&"x".repeat(100_000)).is_none());
        assert!(i.best(&"opening hours ".repeat(10_000)).is_some());
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn nothing_below_threshold() {
        let i = shop();
        assert!(i.best("what is the capital of france").is_none());
        assert!(i.best("").is_none());
        assert!(FaqIndex::build([]).best("hello").is_none());
    }

    /// Matches with scores 0.02 apart (so each is within the band of its
    /// neighbours but not of those two steps away) and priorities that
    /// disagree with the scores: exactly what a pairwise "within the band"
    /// comparison cannot order consistently.
    fn chained_ties(entries: &[FaqEntry]) -> Vec<Match<'_>> {
        entries
            .iter()
            .enumerate()
            .map(|(i, e)| Match {
                entry: e,
                score: 0.99 - 0.02 * i as f64,
            })
            .collect()
    }

    #[test]
    fn ranking_is_a_total_order_whatever_the_input_order() {
        let entries: Vec<FaqEntry> = (0..40)
            .map(|i| entry(&format!("q{i}"), &format!("a{i}"), i * 7919 % 13, 0.5))
            .collect();
        let mut reference = chained_ties(&entries);
        rank(&mut reference);
        let reference: Vec<Uuid> = reference.iter().map(|m| m.entry.id).collect();
        // The same matches, in many input orders (a fixed pseudo-random
        // shuffle per round), must rank the same, and never panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            let mut input = chained_ties(&entries);
            for i in (1..input.len()).rev() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                input.swap(i, (seed % (i as u64 + 1)) as usize);
            }
            rank(&mut input);
            let got: Vec<Uuid> = input.iter().map(|m| m.entry.id).collect();
            assert_eq!(got, reference, "the ranking depends on the input order");
        }
        // The top band is the best score's: of the matches within 0.05 of
        // 0.99 (0.99, 0.97, 0.95), the one with the highest priority wins.
        let mut ranked = chained_ties(&entries);
        rank(&mut ranked);
        let top_band: Vec<&FaqEntry> = entries.iter().take(3).collect();
        let best = top_band.iter().map(|e| e.priority).max().unwrap();
        assert_eq!(ranked[0].entry.priority, best);
        assert!(ranked[..3]
            .iter()
            .all(|m| m.score >= 0.99 - TIE_BAND - 1e-9));
    }

    #[test]
    fn ties_go_to_priority_then_confidence() {
        let i = FaqIndex::build([
            entry("shop hours", "low", 1, 1.0),
            entry("shop hours", "high", 9, 0.1),
            entry("shop hours", "high-conf", 9, 0.9),
        ]);
        assert_eq!(i.best("shop hours").unwrap().entry.answer, "high-conf");
    }
}
