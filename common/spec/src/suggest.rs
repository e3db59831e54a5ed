//! "Did you mean" suggestions: the closest known name to one that is not known.

/// The edit distance between `a` and `b`, in characters.
pub(super) fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest candidate within edit distance 2 (and closer than the typed
/// name's own length, so `ab` never suggests `cd`); ties go to the first.
pub(super) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let len = name.chars().count();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        if candidate == name {
            continue;
        }
        let d = levenshtein(name, candidate);
        if d <= 2 && d < len && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// ` (did you mean "x"?)`, or nothing without a suggestion.
pub(super) fn did_you_mean(s: Option<&str>) -> String {
    s.map(|s| format!(" (did you mean {s:?}?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("splt", ["train", "split"]), Some("split"));
        assert_eq!(suggest("ab", ["cd"]), None);
        assert_eq!(suggest("tran", ["train", "trains"]), Some("train"));
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }
}
