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
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

impl Locator {
    /// Indexes `text`. A text that does not parse yields an empty locator: the YAML
    /// deserializer reports the syntax error with its own position.
    pub fn new(text: &str) -> Self {
        let mut parser = Parser::new_from_str(text);
        let mut documents = Vec::new();
        let mut current: HashMap<String, (u32, u32)> = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        loop {
            let Ok((event, mark)) = parser.next_token() else {
                return Self::default();
            };
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
                    if let Some(Frame::Mapping { key: key @ None, path }) = stack.last_mut() {
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
                    stack.push(Frame::Mapping { path, key: None });
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
        Self { documents }
    }

    /// The path of the value that starts now, advancing the parent frame.
    fn child_path(stack: &mut [Frame]) -> String {
        match stack.last_mut() {
            None => String::new(),
            Some(Frame::Mapping { path, key }) => match key.take() {
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
        let text = "a: 1\nspec:\n  mcp:\n    - server: x\n      when: y\n---\nb:\n  - 1\n  - c: 2\n";
        let loc = Locator::new(text);
        assert_eq!(loc.find(0, "spec.mcp[0].when"), Some((5, 7)));
        assert_eq!(loc.find(0, "spec.mcp[0].server"), Some((4, 7)));
        assert_eq!(loc.find(1, "b[1].c"), Some((9, 5)));
        assert_eq!(loc.find(0, "spec.mcp[0].nope"), Some((4, 7)));
    }
}
