//! Maps field paths inside YAML documents (`spec.mcp[0].when`) to line and column, so that errors
//! found after deserialization can still point at the source.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// Positions of every node of every document in one YAML file.
#[derive(Debug, Default)]
pub struct Locator {
    /// Per document: path → (line, column), both 1-based.
    documents: Vec<HashMap<String, (u32, u32)>>,
}

enum Frame {
    Mapping {
        path: String,
        key: Option<String>,
        keys_seen: usize,
    },
    Sequence {
        path: String,
        index: usize,
    },
}

impl Locator {
    /// Indexes `text`, or returns the syntax error with its 1-based line and column.
    ///
    /// This parser runs first on purpose: it stops at its nesting limit at once, while the
    /// deserializer's time grows with the square of the nesting depth, so only text that passes
    /// here reaches it.
    pub fn new(text: &str) -> Result<Self, (String, u32, u32)> {
        let mut parser = Parser::new_from_str(text);
        let mut documents = Vec::new();
        let mut current: HashMap<String, (u32, u32)> = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        loop {
            let (event, mark) = parser.next_token().map_err(|e| {
                let m = e.marker();
                (
                    e.info().to_owned(),
                    u32::try_from(m.line()).unwrap_or(u32::MAX),
                    u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
                )
            })?;
            let position = (
                u32::try_from(mark.line()).unwrap_or(u32::MAX),
                u32::try_from(mark.col() + 1).unwrap_or(u32::MAX),
            );
            match event {
                Event::StreamEnd => break,
                Event::DocumentStart => {
                    current = HashMap::new();
                    stack.clear();
                }
                Event::DocumentEnd => documents.push(std::mem::take(&mut current)),
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Mapping {
                        key: key @ None,
                        path,
                        keys_seen,
                    }) = stack.last_mut()
                    {
                        // The parser marks a block mapping where its first value starts; the
                        // first key is where a reader sees the mapping begin.
                        if *keys_seen == 0 {
                            current.insert(path.clone(), position);
                        }
                        *keys_seen += 1;
                        let child = join(path, &value);
                        current.entry(child).or_insert(position);
                        *key = Some(value);
                        continue;
                    }
                    let path = Self::child_path(&mut stack);
                    current.entry(path).or_insert(position);
                }
                Event::Alias(_) => {
                    Self::child_path(&mut stack);
                }
                Event::MappingStart(..) => {
                    let path = Self::child_path(&mut stack);
                    current.entry(path.clone()).or_insert(position);
                    stack.push(Frame::Mapping {
                        path,
                        key: None,
                        keys_seen: 0,
                    });
                }
                Event::SequenceStart(..) => {
                    let path = Self::child_path(&mut stack);
                    current.entry(path.clone()).or_insert(position);
                    stack.push(Frame::Sequence { path, index: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        Ok(Self { documents })
    }

    /// The path of the value that starts now, advancing the parent frame.
    fn child_path(stack: &mut [Frame]) -> String {
        match stack.last_mut() {
            None => String::new(),
            Some(Frame::Mapping { path, key, .. }) => match key.take() {
                Some(k) => join(path, &k),
                // A complex (non-scalar) key: not addressable by path.
                None => format!("{path}.?"),
            },
            Some(Frame::Sequence { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                p
            }
        }
    }

    /// Line and column of `path` in document `doc`, or of its nearest located ancestor.
    pub fn find(&self, doc: usize, path: &str) -> Option<(u32, u32)> {
        let map = self.documents.get(doc)?;
        let mut path = path;
        loop {
            if let Some(pos) = map.get(path) {
                return Some(*pos);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_fields_across_documents() {
        let text =
            "a: 1\nspec:\n  mcp:\n    - server: x\n      when: y\n---\nb:\n  - 1\n  - c: 2\n";
        let loc = Locator::new(text).unwrap();
        assert_eq!(loc.find(0, "spec.mcp[0].when"), Some((5, 7)));
        assert_eq!(loc.find(0, "spec.mcp[0].server"), Some((4, 7)));
        assert_eq!(loc.find(1, "b[1].c"), Some((9, 5)));
        assert_eq!(loc.find(0, "spec.mcp[0].nope"), Some((4, 7)));
    }

    #[test]
    fn deep_nesting_is_refused_quickly() {
        let text = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let (message, line, _) = Locator::new(&text).unwrap_err();
        assert!(message.contains("recursion limit"), "{message}");
        assert_eq!(line, 1);
    }
}
