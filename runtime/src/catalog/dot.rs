//! The catalog as a diagram: Graphviz DOT (`dot -Tsvg` draws it) and a
//! Mermaid flowchart (GitHub draws it in Markdown).
//!
//! Both draw the same graph, from [`edges`]: handlers are boxes, subjects
//! ellipses (stadiums in Mermaid), and an edge goes from a producer to a
//! subject and from a subject to each consumer, labelled with the event
//! types on it at the version that handler pinned (`type@1`), or the
//! newest for a handler that follows it (`type@2 (newest)`). A subject no
//! handler produces is fed by an "outside" node; every handler has a
//! dashed edge to the dead-letter queue, drawn as a node of its own.
//! Labels only tell what the manifests declare and the catalog inferred
//! (see the [module doc](super)).

use std::fmt::Write;

use super::{Catalog, Ids, pinned_label};

/// A node of the flow graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Handler(String),
    Subject(String),
    /// Whoever publishes what no handler does.
    Outside,
    DeadLetters,
}

/// One arrow of the flow graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: Node,
    pub to: Node,
    /// One line per event type (or the dead-letter subject).
    pub labels: Vec<String>,
    pub dead_letter: bool,
}

/// Every arrow of `catalog`'s flow, subject by subject, then the
/// dead-letter ones.
pub fn edges(catalog: &Catalog) -> Vec<Edge> {
    let mut edges = Vec::new();
    for subject in &catalog.subjects {
        let node = Node::Subject(subject.subject.clone());
        let label = |handler: Option<&str>,
                     pin: fn(&super::Handler, &str) -> Option<Option<u32>>| {
            let handler = handler.and_then(|name| catalog.handler(name));
            (subject.types.iter())
                .filter_map(|name| {
                    let version = match handler {
                        Some(handler) => pin(handler, name)?,
                        None => None,
                    };
                    Some(match catalog.event_type(name) {
                        Some(entry) => pinned_label(entry, version),
                        None => name.clone(),
                    })
                })
                .collect::<Vec<_>>()
        };
        if subject.producers.is_empty() {
            edges.push(Edge {
                from: Node::Outside,
                to: node.clone(),
                labels: label(None, super::Handler::emitted),
                dead_letter: false,
            });
        }
        for link in &subject.producers {
            edges.push(Edge {
                from: Node::Handler(link.handler.clone()),
                to: node.clone(),
                labels: label(Some(&link.handler), super::Handler::emitted),
                dead_letter: false,
            });
        }
        for link in &subject.consumers {
            edges.push(Edge {
                from: node.clone(),
                to: Node::Handler(link.handler.clone()),
                labels: label(Some(&link.handler), super::Handler::consumed),
                dead_letter: false,
            });
        }
    }
    for (handler, subject) in &catalog.dead_letters.per_handler {
        edges.push(Edge {
            from: Node::Handler(handler.clone()),
            to: Node::DeadLetters,
            labels: vec![subject.clone()],
            dead_letter: true,
        });
    }
    edges
}

fn dlq_title(catalog: &Catalog) -> [String; 2] {
    let dead_letters = &catalog.dead_letters;
    [
        "dead-letter queue".to_string(),
        format!("{} ({})", dead_letters.stream, dead_letters.subjects),
    ]
}

/// The handlers, then the subjects, each with the name it is drawn with.
fn named_nodes(catalog: &Catalog) -> impl Iterator<Item = (Node, &str)> {
    let handlers =
        (catalog.handlers.iter()).map(|h| (Node::Handler(h.name.clone()), h.name.as_str()));
    let subjects =
        (catalog.subjects.iter()).map(|s| (Node::Subject(s.subject.clone()), s.subject.as_str()));
    handlers.chain(subjects)
}

fn uses_outside(edges: &[Edge]) -> bool {
    edges.iter().any(|e| e.from == Node::Outside)
}

/// The catalog as a Graphviz digraph.
pub fn to_dot(catalog: &Catalog) -> String {
    let edges = edges(catalog);
    let mut out = String::from("digraph eventhost {\n  rankdir=LR;\n");
    out.push_str("  node [fontname=\"Helvetica\", fontsize=11];\n");
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=9];\n");
    if uses_outside(&edges) {
        let _ = writeln!(
            out,
            "  {} [shape=hexagon, style=dashed, label=\"outside eventhost\"];",
            dot_id(&Node::Outside)
        );
    }
    for (node, name) in named_nodes(catalog) {
        let shape = match node {
            Node::Handler(_) => "shape=box, style=\"rounded,filled\", fillcolor=\"#dbe9f6\"",
            _ => "shape=ellipse",
        };
        let _ = writeln!(
            out,
            "  {} [{shape}, label={}];",
            dot_id(&node),
            dot_string(&[name])
        );
    }
    let _ = writeln!(
        out,
        "  {} [shape=cylinder, style=filled, fillcolor=\"#f6d5d5\", label={}];",
        dot_id(&Node::DeadLetters),
        dot_string(&dlq_title(catalog))
    );
    for edge in &edges {
        let style = match edge.dead_letter {
            true => ", style=dashed, color=\"#a05050\", fontcolor=\"#a05050\"",
            false => "",
        };
        let _ = writeln!(
            out,
            "  {} -> {} [label={}{style}];",
            dot_id(&edge.from),
            dot_id(&edge.to),
            dot_string(&edge.labels)
        );
    }
    out.push_str("}\n");
    out
}

/// A DOT id: a quoted string, so any name is one.
fn dot_id(node: &Node) -> String {
    match node {
        Node::Handler(name) => dot_string(&[format!("handler:{name}")]),
        Node::Subject(name) => dot_string(&[format!("subject:{name}")]),
        Node::Outside => "\"outside\"".into(),
        Node::DeadLetters => "\"dead-letters\"".into(),
    }
}

/// Lines as one quoted DOT string, `\n` between them.
fn dot_string(lines: &[impl AsRef<str>]) -> String {
    let escaped: Vec<String> = (lines.iter())
        .map(|line| line.as_ref().replace('\\', "\\\\").replace('"', "\\\""))
        .collect();
    format!("\"{}\"", escaped.join("\\n"))
}

/// The catalog as a Mermaid flowchart (a ```` ```mermaid ```` block's body).
pub fn to_mermaid(catalog: &Catalog) -> String {
    let edges = edges(catalog);
    let mut ids = Ids::default();
    let mut id = |node: &Node| match node {
        Node::Handler(name) => ids.get(&format!("h.{name}")),
        Node::Subject(name) => ids.get(&format!("s.{name}")),
        Node::Outside => "outside".into(),
        Node::DeadLetters => "dlq".into(),
    };
    let mut out = String::from("flowchart LR\n");
    if uses_outside(&edges) {
        let _ = writeln!(out, "  outside{{{{\"outside eventhost\"}}}}");
    }
    for (node, name) in named_nodes(catalog) {
        let text = mermaid_text(&[name]);
        let shape = match node {
            Node::Handler(_) => format!("[{text}]"),
            _ => format!("([{text}])"),
        };
        let _ = writeln!(out, "  {}{shape}", id(&node));
    }
    let _ = writeln!(out, "  dlq[({})]", mermaid_text(&dlq_title(catalog)));
    for edge in &edges {
        let arrow = if edge.dead_letter { "-.->" } else { "-->" };
        let (from, to) = (id(&edge.from), id(&edge.to));
        let label = match edge.labels.is_empty() {
            true => String::new(),
            false => format!("|{}|", mermaid_text(&edge.labels)),
        };
        let _ = writeln!(out, "  {from} {arrow}{label} {to}");
    }
    out
}

/// Lines as one quoted Mermaid label: Mermaid's entity codes for what its
/// syntax or HTML would read, `<br/>` between lines.
fn mermaid_text(lines: &[impl AsRef<str>]) -> String {
    let escaped: Vec<String> = (lines.iter())
        .map(|line| {
            (line.as_ref())
                .replace('#', "#35;")
                .replace('"', "#quot;")
                .replace('<', "#lt;")
                .replace('>', "#gt;")
        })
        .collect();
    format!("\"{}\"", escaped.join("<br/>"))
}
