//! `{{ params.<name> }}` and `{{ steps.<name>.output }}` in step fields: finding the
//! references (to validate a run before it starts) and substituting them.

/// One `{{ … }}` placeholder.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reference {
    Param(String),
    StepOutput(String),
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Param(name) => write!(f, "{{{{ params.{name} }}}}"),
            Reference::StepOutput(step) => write!(f, "{{{{ steps.{step}.output }}}}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("a {{{{ is never closed by }}}}")]
    Unclosed,
    #[error("{{{{ {0} }}}} is neither params.<name> nor steps.<name>.output")]
    Unknown(String),
    #[error("{0} has no value")]
    Unresolved(Reference),
}

/// The placeholders of `text`, in order.
pub fn references(text: &str) -> Result<Vec<Reference>, TemplateError> {
    let mut found = Vec::new();
    for_each(text, |_, r| {
        found.push(r);
        Ok(())
    })?;
    Ok(found)
}

/// `text` with every placeholder replaced by what `value` gives for it.
pub fn render<'a>(text: &str, value: impl Fn(&Reference) -> Option<&'a str>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut literal_end = 0;
    for_each(text, |span, r| {
        out.push_str(&text[literal_end..span.start]);
        out.push_str(value(&r).ok_or(TemplateError::Unresolved(r))?);
        literal_end = span.end;
        Ok(())
    })?;
    out.push_str(&text[literal_end..]);
    Ok(out)
}

/// Calls `f` with the byte range and the reference of each placeholder.
fn for_each(
    text: &str,
    mut f: impl FnMut(std::ops::Range<usize>, Reference) -> Result<(), TemplateError>,
) -> Result<(), TemplateError> {
    let mut from = 0;
    while let Some(open) = text[from..].find("{{").map(|i| i + from) {
        let close = text[open + 2..].find("}}").map(|i| i + open + 2).ok_or(TemplateError::Unclosed)?;
        let expression = text[open + 2..close].trim();
        f(open..close + 2, parse(expression)?)?;
        from = close + 2;
    }
    Ok(())
}

fn parse(expression: &str) -> Result<Reference, TemplateError> {
    let unknown = || TemplateError::Unknown(expression.to_string());
    let is_name = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if let Some(name) = expression.strip_prefix("params.") {
        return if is_name(name) { Ok(Reference::Param(name.to_string())) } else { Err(unknown()) };
    }
    if let Some(step) = expression.strip_prefix("steps.").and_then(|rest| rest.strip_suffix(".output")) {
        return if is_name(step) { Ok(Reference::StepOutput(step.to_string())) } else { Err(unknown()) };
    }
    Err(unknown())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_with_or_without_spaces() {
        let refs = references("Keywords for {{ params.topic }} using {{steps.research.output}}").unwrap();
        assert_eq!(refs, [Reference::Param("topic".into()), Reference::StepOutput("research".into())]);
        assert_eq!(references("no placeholders").unwrap(), []);
    }

    #[test]
    fn bad_placeholders_are_named() {
        assert_eq!(references("x {{ params.topic"), Err(TemplateError::Unclosed));
        assert_eq!(references("{{ env.HOME }}"), Err(TemplateError::Unknown("env.HOME".into())));
        assert_eq!(references("{{ steps.a.result }}"), Err(TemplateError::Unknown("steps.a.result".into())));
        assert_eq!(references("{{ params. }}"), Err(TemplateError::Unknown("params.".into())));
    }

    #[test]
    fn rendering_substitutes_once_and_does_not_reinterpret_values() {
        let value = |r: &Reference| match r {
            Reference::Param(p) if p == "topic" => Some("{{ params.topic }} sale"),
            Reference::StepOutput(s) if s == "a" => Some("A"),
            _ => None,
        };
        assert_eq!(render("{{ params.topic }}/{{ steps.a.output }}!", value).unwrap(), "{{ params.topic }} sale/A!");
        let missing = render("{{ steps.b.output }}", value).unwrap_err();
        assert_eq!(missing.to_string(), "{{ steps.b.output }} has no value");
    }
}
