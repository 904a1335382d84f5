//! `${VAR}` in any config string is replaced from the environment (DESIGN §8), so secrets
//! (tokens, passwords, keys) stay out of the file. Only `${NAME}` with `NAME` an identifier is
//! replaced: shell forms such as `${VAR:-default}` or `${x%%.*}` in actuator commands are left
//! for the shell, and `$${` writes a literal `${`. A variable that is not set is a config error
//! naming where it was used.

use serde_yaml_ng::Value;

/// Replaces `${NAME}` in every string of `value` (keys included) using `lookup`; returns the
/// problems (unset variables), each with its place in the file.
pub fn expand(value: &mut Value, lookup: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut problems = Vec::new();
    walk(value, "", lookup, &mut problems);
    problems
}

fn walk(v: &mut Value, path: &str, lookup: &dyn Fn(&str) -> Option<String>, p: &mut Vec<String>) {
    match v {
        Value::String(s) if s.contains('$') => *s = expand_str(s, path, lookup, p),
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, &format!("{path}[{i}]"), lookup, p);
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                let child = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                walk(item, &child, lookup, p);
            }
        }
        Value::Tagged(t) => walk(&mut t.value, path, lookup, p),
        _ => {}
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn expand_str(
    s: &str,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            // `$${` is a literal `${`.
            out.push_str("${");
            rest = tail;
            continue;
        }
        if let Some(body) = after.strip_prefix('{')
            && let Some(end) = body.find('}')
            && is_name(&body[..end])
        {
            let name = &body[..end];
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => p.push(format!("{path}: ${{{name}}} is not set in the environment")),
            }
            rest = &body[end + 1..];
            continue;
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    /// Table: identifiers are replaced, shell forms and `$${` are not, unset ones are errors
    /// naming the field.
    #[test]
    fn expands_only_names_and_reports_unset_ones() {
        let mut v: Value = serde_yaml_ng::from_str(
            r#"
auth: { ingest_tokens: ["${TOKEN}", "a-${TOKEN}-b", "${EMPTY}"] }
actuator:
  executors:
    - { command: 'n="${ISTIO_NS:-shop}"; w=${weight%%.*}; echo $$ $${TOKEN} $HOME' }
kafka: { client: { sasl.password: "${MISSING}" } }
"#,
        )
        .unwrap();
        let problems = expand(&mut v, &env);
        assert_eq!(
            problems,
            ["kafka.client.sasl.password: ${MISSING} is not set in the environment"]
        );
        assert_eq!(
            serde_yaml_ng::to_string(&v["auth"]["ingest_tokens"]).unwrap(),
            "- s3cret\n- a-s3cret-b\n- ''\n"
        );
        assert_eq!(
            v["actuator"]["executors"][0]["command"].as_str().unwrap(),
            r#"n="${ISTIO_NS:-shop}"; w=${weight%%.*}; echo $$ ${TOKEN} $HOME"#
        );
    }
}
