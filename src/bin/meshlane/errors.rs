//! How failures reach the operator: one line on stderr, whether clap
//! rejected the arguments or a command failed (libbpf's own messages go to
//! tracing: `datapath::route_libbpf_log`).

/// One line from clap's multi-line report: the message, plus the accepted
/// values when clap lists them.
pub(crate) fn usage_error_line(e: &clap::Error) -> String {
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let text = e.render().to_string();
        let usage = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Usage: "))
            .unwrap_or("meshlane <COMMAND>");
        return format!("a command is required ({usage}); see --help");
    }
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let mut line = first.strip_prefix("error: ").unwrap_or(first).to_string();
    // "the following required arguments were not provided:" + the next line.
    if line.ends_with(':') {
        if let Some(next) = lines.next() {
            line.push(' ');
            line.push_str(next);
        }
    }
    if let Some(values) = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("[possible values: "))
    {
        line.push_str(&format!(
            " (possible values: {}",
            values.trim_end_matches(']')
        ));
        line.push(')');
    }
    line.push_str("; see --help");
    line
}

/// The error and its causes on one line, without repeating a cause that a
/// message already quotes.
pub(crate) fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}
