//! Trains the injection classifier: `cargo run --release -p warden-inspect --example
//! train_classifier -- TRAIN.jsonl OUT.tsv`, where TRAIN.jsonl is the train split
//! `eval/corpus.py` writes. The shipped model is `model/injection-classifier.tsv`. With a third
//! argument, TEST.jsonl, it also prints how the model alone does on that split.

use std::io::BufRead as _;

use std::collections::BTreeMap;

use warden_inspect::classifier::{Model, Training, train};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (input, output, test) = match args.as_slice() {
        [input, output] => (input, output, None),
        [input, output, test] => (input, output, Some(test)),
        _ => return Err("usage: train_classifier TRAIN.jsonl OUT.tsv [TEST.jsonl]".into()),
    };
    let samples: Vec<(String, bool)> = rows(input)?
        .into_iter()
        // Where the injection was put into a benign item, the passage itself is what is learned.
        .map(|row| (row.payload.unwrap_or(row.text), row.injected))
        .collect();
    let model = train(&samples, &Training::default());
    std::fs::write(output, &model)?;
    eprintln!(
        "trained on {} samples ({} injected); {} weights written to {output}",
        samples.len(),
        samples.iter().filter(|(_, i)| *i).count(),
        model.lines().filter(|l| !l.starts_with(['#', '@'])).count()
    );
    if let Some(test) = test {
        let model = Model::parse(&model)?;
        let mut tally: BTreeMap<(String, bool), (usize, usize)> = BTreeMap::new();
        for row in rows(test)? {
            let entry = tally.entry((row.source, row.injected)).or_default();
            entry.0 += usize::from(model.score(&row.text) >= 0.5);
            entry.1 += 1;
        }
        for ((source, injected), (flagged, all)) in tally {
            let what = if injected { "recall" } else { "false alarms" };
            eprintln!("{source:>24} {what:>12}: {flagged}/{all}");
        }
    }
    Ok(())
}

struct Row {
    text: String,
    payload: Option<String>,
    injected: bool,
    source: String,
}

fn rows(path: &str) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(path)?).lines() {
        let row: serde_json::Value = serde_json::from_str(&line?)?;
        let field = |k: &str| {
            row.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        out.push(Row {
            text: field("text").ok_or("a row without text")?,
            payload: field("payload"),
            injected: row["label"].as_i64() == Some(1),
            source: field("source").unwrap_or_default(),
        });
    }
    Ok(out)
}
