//! Source locations: where a step, a field or a token sits in the YAML text, so
//! that a diagnostic can say `file:line:column`.
//!
//! serde_yaml gives no positions for values, so this is a heuristic over the
//! text of block-style YAML. It never guesses: when the text does not look as
//! expected it gives no position rather than a wrong one.

/// 1-based (line, column).
pub(super) type Pos = (usize, usize);

/// The lines of one step item under `steps:`: `[start, end)`, with `col` the byte
/// column at which its keys start (`name` in `  - name: x`).
#[derive(Debug, Clone, Copy)]
struct Block {
    start: usize,
    end: usize,
    col: usize,
}

/// Heuristic positions of things in the YAML text, for block-style YAML. Every
/// lookup returns `None` rather than guessing when the text does not look as
/// expected (flow style, odd indentation, ...).
pub(super) struct Locator<'a> {
    /// Source lines with comments removed.
    lines: Vec<&'a str>,
    /// One block per step, or `None` if the items could not be matched to the
    /// parsed steps one to one.
    steps: Option<Vec<Block>>,
}

/// Characters that make up names and paths; a token match must not be glued to
/// more of these.
fn is_token_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// The line without a trailing `# comment` (a `#` at the start or after
/// whitespace, outside quotes).
pub(super) fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev: Option<char> = None;
    let mut escaped = false;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some('"') => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    quote = None;
                }
            }
            Some(q) => {
                if c == q {
                    if chars.peek().is_some_and(|&(_, n)| n == q) {
                        chars.next(); // '' is an escaped quote
                    } else {
                        quote = None;
                    }
                }
            }
            None => {
                let at_boundary =
                    prev.is_none_or(|p| p.is_whitespace() || matches!(p, '[' | '{' | ','));
                if (c == '"' || c == '\'') && at_boundary {
                    quote = Some(c);
                } else if c == '#' && prev.is_none_or(char::is_whitespace) {
                    return &line[..i];
                }
            }
        }
        prev = Some(c);
    }
    line
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

fn is_item_line(trimmed: &str) -> bool {
    trimmed == "-" || trimmed.starts_with("- ") || trimmed.starts_with("-\t")
}

/// The byte offset of the first occurrence of `token` in `line` at or after
/// `from` that is not glued to other name characters.
pub(super) fn find_token(line: &str, from: usize, token: &str) -> Option<usize> {
    if token.is_empty() {
        return None;
    }
    let hay = line.get(from..)?;
    let first = token.chars().next()?;
    let last = token.chars().next_back()?;
    hay.match_indices(token).map(|(i, _)| from + i).find(|&i| {
        let before_ok = !is_token_char(first)
            || line[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !is_token_char(c));
        let after_ok = !is_token_char(last)
            || line[i + token.len()..]
                .chars()
                .next()
                .is_none_or(|c| !is_token_char(c));
        before_ok && after_ok
    })
}

impl<'a> Locator<'a> {
    pub(super) fn new(text: &'a str, step_count: usize) -> Self {
        let lines: Vec<&str> = text.lines().map(strip_comment).collect();
        let mut locator = Locator { lines, steps: None };
        locator.steps = locator.find_steps(step_count);
        locator
    }

    fn pos(&self, line: usize, byte: usize) -> Option<Pos> {
        let text = self.lines.get(line)?;
        let column = text.get(..byte)?.chars().count() + 1;
        Some((line + 1, column))
    }

    /// The field `key` among the lines `[start, end)` whose keys sit at byte column
    /// `col`: (line, end of the field's lines).
    fn find_field(
        &self,
        start: usize,
        end: usize,
        col: usize,
        key: &str,
    ) -> Option<(usize, usize)> {
        let end = end.min(self.lines.len());
        let line = (start..end).find(|&l| {
            let text = self.lines[l];
            let (Some(prefix), Some(rest)) = (text.get(..col), text.get(col..)) else {
                return false;
            };
            let prefix_ok = if l == start {
                prefix.chars().all(|c| c == ' ' || c == '-')
            } else {
                prefix.chars().all(|c| c == ' ')
            };
            prefix_ok
                && rest
                    .strip_prefix(key)
                    .is_some_and(|r| r.trim_start_matches(' ').starts_with(':'))
        })?;
        let field_end = (line + 1..end)
            .find(|&l| {
                let text = self.lines[l];
                if is_blank(text) {
                    return false;
                }
                let indent = indent_of(text);
                indent < col || indent == col && !is_item_line(text.trim_start())
            })
            .unwrap_or(end);
        Some((line, field_end))
    }

    /// The first occurrence of `token` in the lines `[start, end)`, searching the
    /// first line only from byte `from`.
    fn search(&self, start: usize, end: usize, from: usize, token: &str) -> Option<Pos> {
        let end = end.min(self.lines.len());
        (start..end).find_map(|l| {
            let skip = if l == start { from } else { 0 };
            find_token(self.lines[l], skip, token).and_then(|b| self.pos(l, b))
        })
    }

    /// Position of `token` within the field `key` of a block (or of the key itself
    /// when the token is not found); `None` if the field is not found.
    fn in_field(&self, block: Block, key: &str, token: Option<&str>) -> Option<Pos> {
        let (line, field_end) = self.find_field(block.start, block.end, block.col, key)?;
        if let Some(token) = token {
            let after_key = block.col + key.len();
            if let Some(p) = self.search(line, field_end, after_key, token) {
                return Some(p);
            }
        }
        self.pos(line, block.col)
    }

    fn top_block(&self) -> Block {
        Block {
            start: 0,
            end: self.lines.len(),
            col: 0,
        }
    }

    /// A top-level field (or `token` inside it).
    pub(super) fn top(&self, key: &str, token: Option<&str>) -> Option<Pos> {
        self.in_field(self.top_block(), key, token)
    }

    fn find_steps(&self, step_count: usize) -> Option<Vec<Block>> {
        let (line, end) = self.find_field(0, self.lines.len(), 0, "steps")?;
        let after = self.lines[line].get("steps".len()..)?.trim_start();
        if after.trim() != ":" {
            return None; // flow style or something unexpected
        }
        let mut starts = Vec::new();
        let mut item_indent = None;
        for l in line + 1..end {
            let text = self.lines[l];
            if is_blank(text) {
                continue;
            }
            let indent = indent_of(text);
            let item = is_item_line(text.trim_start());
            match item_indent {
                None if item => {
                    item_indent = Some(indent);
                    starts.push(l);
                }
                None => return None,
                Some(ii) if indent == ii && item => starts.push(l),
                Some(ii) if indent <= ii => return None,
                Some(_) => {}
            }
        }
        if starts.len() != step_count {
            return None;
        }
        let blocks = starts
            .iter()
            .enumerate()
            .map(|(k, &start)| {
                let end = starts.get(k + 1).copied().unwrap_or(end);
                let text = self.lines[start];
                let dash = indent_of(text);
                let after_dash = &text[dash + 1..];
                let col = if after_dash.trim().is_empty() {
                    (start + 1..end)
                        .find(|&l| !is_blank(self.lines[l]))
                        .map_or(dash + 2, |l| indent_of(self.lines[l]))
                } else {
                    dash + 1 + indent_of(after_dash)
                };
                Block { start, end, col }
            })
            .collect();
        Some(blocks)
    }

    fn step_block(&self, i: usize) -> Option<Block> {
        self.steps.as_ref()?.get(i).copied()
    }

    /// The start of step `i`: its `name` value, or its `-`.
    pub(super) fn step_head(&self, i: usize, name: Option<&str>) -> Option<Pos> {
        let block = self.step_block(i)?;
        self.in_field(block, "name", name)
            .or_else(|| self.pos(block.start, indent_of(self.lines[block.start])))
    }

    /// `token` within field `key` of step `i`, else the field, else `token`
    /// anywhere in the step, else the step's head.
    pub(super) fn step(
        &self,
        i: usize,
        name: Option<&str>,
        key: &str,
        token: Option<&str>,
    ) -> Option<Pos> {
        let block = self.step_block(i)?;
        self.in_field(block, key, token)
            .or_else(|| token.and_then(|t| self.search(block.start, block.end, 0, t)))
            .or_else(|| self.step_head(i, name))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{Pipeline, SpecError, parse_pipeline};

    fn parse(yaml: &str) -> Result<Pipeline, SpecError> {
        parse_pipeline("pipeline.yaml", yaml, &BTreeMap::new())
    }

    #[test]
    fn locator_never_panics_on_odd_text() {
        for yaml in [
            "name: x\nsteps:\n  - name: é\n    command: [x]\n",
            "name: x\nsteps:\n\t- name: a\n",
            "name: x\nsteps:\n  - name: a\n    command: [\"${params.ü\"]\n",
            "name: \"x\"\nsteps:\n  - \"name\": a\n    command: [x]\n    needs: [ü]\n",
            "name: x\nsteps:\n  - name: a\n    shell: |\n      echo ${oops}\n      - fake item\n",
            "---\nname: x\nsteps:\n- {name: a}\n-\n- name: b\n",
        ] {
            let _ = parse(yaml);
        }
        let loc = Locator::new("a:\n  - é: ü\n- x\n", 2);
        assert!(loc.steps.is_none());
        assert_eq!(find_token("ééé", 1, "é"), None);
    }

    #[test]
    fn comment_stripping() {
        assert_eq!(strip_comment("a: b # c"), "a: b ");
        assert_eq!(strip_comment("a: \"b # c\" # d"), "a: \"b # c\" ");
        assert_eq!(strip_comment("a: 'it''s # x'"), "a: 'it''s # x'");
        assert_eq!(strip_comment("a: b#c"), "a: b#c");
        assert_eq!(strip_comment("# all"), "");
    }
}
