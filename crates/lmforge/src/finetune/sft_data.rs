//! Causal fine-tuning data: rows of prompt–completion pairs or chat conversations, read from
//! JSONL (`{"prompt", "completion"}` or `{"messages": [{"role", "content"}, ...]}`, optional
//! `reference` / `references` for generation metrics) or TSV / CSV columns, and their tokens
//! with the positions the loss is on.
//!
//! A prompt–completion row is the prompt followed by the completion and the end-of-text token
//! (TRL's non-conversational format); a conversation is rendered by the chat template
//! (`crate::chat`), cut into prompt and assistant pieces. Each piece is tokenized on its own and
//! the pieces concatenated, so the prompt's tokens are exactly those generation is given. With
//! `sft.train_on = "completion"` only the completion / assistant tokens are targets (the
//! prompt is masked, as TRL's completion-only collator); rows longer than the limit are cut at
//! the right, and a row left with no target is dropped and counted.

use super::config::{ClsDataConfig, FinetuneConfig, TrainOn};
use super::dataset::{format_of, jsonl_objects, read_delimited, BadRows, Format, Policy, Reason};
use crate::chat::{ChatTemplate, Message, Segment};
use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// What a row holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Conversation {
    /// A prompt and, for training, its completion.
    Completion { prompt: String, completion: Option<String> },
    /// A chat; for training it ends with an assistant turn.
    Chat(Vec<Message>),
}

/// One row: its 1-based line, its content, and the references generations are scored against
/// (the row's `reference(s)`, else its completion or last assistant turn).
#[derive(Debug, Clone, PartialEq)]
pub struct SftRow {
    pub line: u64,
    pub conversation: Conversation,
    pub references: Vec<String>,
}

/// Reads `path` (JSONL, TSV or CSV by `data.format`). With `need_target`, a row without a
/// completion (or a conversation without a final assistant turn) is a bad row.
pub fn read_rows(path: &Path, cfg: &FinetuneConfig, need_target: bool) -> Result<(Vec<SftRow>, BadRows)> {
    let data = &cfg.data;
    let mut policy = Policy { path, fail: data.bad_rows == super::config::BadRowPolicy::Fail, bad: BadRows::default() };
    let rows = match format_of(path, data.format)? {
        Format::Jsonl => read_jsonl(path, cfg, need_target, &mut policy)?,
        Format::Conll => return Err(super::dataset::conll_refused(path, "causal_lm")),
        format => {
            let columns = ClsDataConfig {
                text_column: cfg.sft.prompt_column.clone(),
                label_column: cfg.sft.completion_column.clone(),
                text_pair_column: String::new(),
                ..data.clone()
            };
            let mut rows = Vec::new();
            for r in read_delimited(path, &columns, format, &mut policy)? {
                if need_target && r.label.is_none() {
                    let detail = format!("no completion (column `{}`)", cfg.sft.completion_column);
                    policy.reject(r.line, Reason::MissingLabel, detail)?;
                    continue;
                }
                let references = r.label.iter().cloned().collect();
                rows.push(SftRow {
                    line: r.line,
                    conversation: Conversation::Completion { prompt: r.text, completion: r.label },
                    references,
                });
            }
            rows
        }
    };
    if rows.is_empty() {
        let why = if policy.bad.total() > 0 { format!(": {}", policy.bad.summary()) } else { String::new() };
        return Err(Error::format(path, format!("no usable rows{why}")));
    }
    Ok((rows, policy.bad))
}

fn read_jsonl(path: &Path, cfg: &FinetuneConfig, need_target: bool, policy: &mut Policy) -> Result<Vec<SftRow>> {
    let s = &cfg.sft;
    let mut rows = Vec::new();
    for (line_no, obj) in jsonl_objects(path, policy)? {
        let references = match (obj.get("references"), obj.get("reference")) {
            (Some(Value::Array(a)), _) if a.iter().all(Value::is_string) => {
                a.iter().filter_map(Value::as_str).map(String::from).collect()
            }
            (Some(_), _) => {
                policy.reject(line_no, Reason::Malformed, "`references` is not a list of strings".into())?;
                continue;
            }
            (None, Some(Value::String(r))) => vec![r.clone()],
            (None, Some(_)) => {
                policy.reject(line_no, Reason::Malformed, "`reference` is not a string".into())?;
                continue;
            }
            (None, None) => Vec::new(),
        };
        let (conversation, target) = if let Some(m) = obj.get(&s.messages_column) {
            let messages: Vec<Message> = match serde_json::from_value(m.clone()) {
                Ok(m) => m,
                Err(e) => {
                    let detail =
                        format!("`{}` is not a list of {{\"role\", \"content\"}} strings: {e}", s.messages_column);
                    policy.reject(line_no, Reason::Malformed, detail)?;
                    continue;
                }
            };
            let last_assistant = messages.last().filter(|m| m.role == "assistant").map(|m| m.content.clone());
            (Conversation::Chat(messages), last_assistant)
        } else {
            let Some(Value::String(prompt)) = obj.get(&s.prompt_column) else {
                let detail = format!("no string `{}` (or `{}` list)", s.prompt_column, s.messages_column);
                policy.reject(line_no, Reason::EmptyText, detail)?;
                continue;
            };
            let completion = obj.get(&s.completion_column).and_then(Value::as_str).map(String::from);
            let c = completion.clone();
            (Conversation::Completion { prompt: prompt.clone(), completion }, c)
        };
        if need_target && target.as_deref().is_none_or(str::is_empty) {
            let detail = match &conversation {
                Conversation::Chat(_) => "the conversation does not end with an assistant turn".to_string(),
                Conversation::Completion { .. } => format!("no completion (`{}`)", s.completion_column),
            };
            policy.reject(line_no, Reason::MissingLabel, detail)?;
            continue;
        }
        let references = if references.is_empty() { target.into_iter().collect() } else { references };
        rows.push(SftRow { line: line_no, conversation, references });
    }
    Ok(rows)
}

/// A row's tokens for training and evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct SftEncoded {
    /// The row's line in its file.
    pub line: u64,
    pub ids: Vec<u32>,
    /// Positions `t` whose next token `ids[t + 1]` is a target, ascending.
    pub targets: Vec<u32>,
    /// The tokens before the last trained piece: what generation is given.
    pub prompt: Vec<u32>,
    pub references: Vec<String>,
}

/// Rows that did not train as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Truncation {
    /// Rows cut at the right to the length limit (some targets kept).
    pub truncated: u64,
    /// Rows dropped: no target left within the limit (a prompt as long as the limit).
    pub dropped: u64,
    pub max_length: usize,
}

impl Truncation {
    pub fn summary(&self) -> Option<String> {
        (self.truncated + self.dropped > 0).then(|| {
            format!(
                "{} rows cut to {} tokens, {} dropped (no completion token within the limit)",
                self.truncated, self.max_length, self.dropped
            )
        })
    }
}

/// Turns rows into tokens: the pieces of each row, tokenized one by one.
pub struct SftEncoder<'a> {
    pub tokenizer: &'a TextTokenizer,
    pub template: &'a ChatTemplate,
    pub train_on: TrainOn,
    /// Prompt–completion rows: the id appended to the completion.
    pub eos: Option<u32>,
    pub max_length: usize,
}

impl SftEncoder<'_> {
    /// The pieces of a row (prompt untrained, completion / assistant turns trained) and
    /// whether the end-of-text token follows (prompt–completion rows).
    fn pieces(&self, row: &SftRow) -> Result<Vec<Segment>> {
        let at = |e: Error| Error::Invalid(format!("line {}: {e}", row.line));
        Ok(match &row.conversation {
            Conversation::Completion { prompt, completion } => {
                let mut v = vec![Segment { text: prompt.clone(), trained: false }];
                if let Some(c) = completion {
                    v.push(Segment { text: c.clone(), trained: true });
                }
                v
            }
            Conversation::Chat(messages) if messages.last().is_some_and(|m| m.role == "assistant") => {
                self.template.segments(messages).map_err(at)?
            }
            Conversation::Chat(messages) => {
                vec![Segment { text: self.template.prompt(messages).map_err(at)?, trained: false }]
            }
        })
    }

    /// Tokens, targets and generation prompt of `row`, and whether it was cut; None when no
    /// target is left within `max_length`.
    pub fn encode(&self, row: &SftRow) -> Result<(Option<SftEncoded>, bool)> {
        let pieces = self.pieces(row)?;
        let completion_row = matches!(row.conversation, Conversation::Completion { completion: Some(_), .. });
        let last_trained = pieces.iter().rposition(|p| p.trained);
        let (mut ids, mut trained, mut prompt) = (Vec::new(), Vec::new(), None);
        for (i, p) in pieces.iter().enumerate() {
            if Some(i) == last_trained {
                prompt = Some(ids.clone());
            }
            let t = self.tokenizer.encode(&p.text)?;
            trained.extend(std::iter::repeat_n(p.trained || self.train_on == TrainOn::All, t.len()));
            ids.extend(t);
        }
        if completion_row {
            if let Some(eos) = self.eos {
                ids.push(eos);
                trained.push(true);
            }
        }
        let prompt = prompt.unwrap_or_else(|| ids.clone());
        let cut = ids.len() > self.max_length;
        ids.truncate(self.max_length);
        let targets: Vec<u32> =
            (0..ids.len().saturating_sub(1)).filter(|&t| trained[t + 1]).map(|t| t as u32).collect();
        if targets.is_empty() && last_trained.is_some() {
            return Ok((None, cut));
        }
        Ok((Some(SftEncoded { line: row.line, ids, targets, prompt, references: row.references.clone() }), cut))
    }

    /// Encodes training / validation rows (each must have a target): the kept rows and what
    /// truncation did.
    pub fn encode_all(&self, rows: &[SftRow]) -> Result<(Vec<SftEncoded>, Truncation)> {
        let mut t = Truncation { max_length: self.max_length, ..Default::default() };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match self.encode(row)? {
                (Some(e), cut) => {
                    t.truncated += cut as u64;
                    out.push(e);
                }
                (None, _) => t.dropped += 1,
            }
        }
        Ok((out, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FinetuneConfig {
        FinetuneConfig::resolve(None, &["data.train=t".into(), "model.base=m".into(), "task.kind=causal_lm".into()])
            .unwrap()
    }

    #[test]
    fn jsonl_rows_pairs_chats_and_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            concat!(
                "{\"prompt\": \"2+2=\", \"completion\": \"4\"}\n",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}], \"references\": [\"yo\", \"hey\"]}\n",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
                "{\"prompt\": \"x\"}\n",
                "{\"messages\": \"oops\"}\n",
            ),
        )
        .unwrap();
        let (rows, bad) = read_rows(&p, &cfg(), true).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].references, ["4"]);
        assert_eq!(rows[1].references, ["yo", "hey"]);
        assert_eq!((bad.missing_label, bad.malformed), (2, 1));
        assert!(bad.examples[0].contains("d.jsonl:3: the conversation does not end with an assistant turn"), "{bad:?}");
        // Generation inputs need no target.
        let (rows, bad) = read_rows(&p, &cfg(), false).unwrap();
        assert_eq!((rows.len(), bad.total()), (4, 1));

        let tsv = dir.path().join("d.tsv");
        std::fs::write(&tsv, "prompt\tcompletion\nSay a\ta\nSay b\t\n").unwrap();
        let (rows, bad) = read_rows(&tsv, &cfg(), true).unwrap();
        assert_eq!((rows.len(), bad.missing_label), (1, 1));
    }
}
