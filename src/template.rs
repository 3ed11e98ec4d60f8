//! Task templates: `{inputs.NAME}`, `{STEP.output}` and `{STEP.session_id}` inside a step's
//! task text, with `{{` and `}}` for literal braces.
//!
//! A template is parsed once (spec validation reports parse errors and checks every
//! reference against the graph) and rendered when its step starts, from whatever implements
//! [`TemplateContext`] — in practice the [`crate::WorkflowState`].

use crate::spec::is_identifier;

/// A value a template refers to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TemplateRef {
    /// `{inputs.NAME}`: a workflow input.
    Input(String),
    /// `{STEP.output}`: an upstream step's output.
    StepOutput(String),
    /// `{STEP.session_id}`: an upstream step's agent session id ("" when it has none).
    StepSessionId(String),
}

impl TemplateRef {
    /// The step this refers to, if it refers to a step.
    pub fn step(&self) -> Option<&str> {
        match self {
            TemplateRef::Input(_) => None,
            TemplateRef::StepOutput(s) | TemplateRef::StepSessionId(s) => Some(s),
        }
    }
}

impl std::fmt::Display for TemplateRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateRef::Input(name) => write!(f, "{{inputs.{name}}}"),
            TemplateRef::StepOutput(step) => write!(f, "{{{step}.output}}"),
            TemplateRef::StepSessionId(step) => write!(f, "{{{step}.session_id}}"),
        }
    }
}

/// What went wrong parsing or rendering a template. Positions count characters from 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` with no `}` after it (before the next `{` or the end).
    #[error("'{{' at character {at} is never closed (write '{{{{' for a literal brace)")]
    Unterminated {
        /// Where the `{` is.
        at: usize,
    },
    /// A `}` that closes nothing.
    #[error("'}}' at character {at} has no matching '{{' (write '}}}}' for a literal brace)")]
    UnmatchedClose {
        /// Where the `}` is.
        at: usize,
    },
    /// Something in braces that is not a reference.
    #[error(
        "'{{{text}}}' at character {at} is not a reference: expected {{inputs.NAME}}, \
         {{STEP.output}} or {{STEP.session_id}} (write '{{{{' for a literal brace)"
    )]
    BadReference {
        /// Where the `{` is.
        at: usize,
        /// What was between the braces.
        text: String,
    },
    /// `{STEP.something}` where `something` is neither `output` nor `session_id`.
    #[error(
        "'{{{step}.{field}}}' at character {at}: unknown field '{field}'; \
         only 'output' and 'session_id' can follow a step id"
    )]
    UnknownField {
        /// Where the `{` is.
        at: usize,
        /// The step named.
        step: String,
        /// The field asked for.
        field: String,
    },
    /// Rendering: an input the context does not have.
    #[error("input '{0}' has no value")]
    MissingInput(String),
    /// Rendering: a step with no output (yet).
    #[error("step '{0}' has no output yet")]
    MissingOutput(String),
    /// Rendering asked for a step that does not exist.
    #[error("unknown step '{0}'")]
    UnknownStep(String),
}

/// Where a template's values come from when it is rendered.
pub trait TemplateContext {
    /// The value of input `name`.
    fn input(&self, name: &str) -> Option<&str>;
    /// The output of step `step`, once it has one (completed, or skipped).
    fn step_output(&self, step: &str) -> Option<&str>;
    /// The agent session id of step `step`, if it reported one.
    fn step_session_id(&self, step: &str) -> Option<&str>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Ref(TemplateRef),
}

/// A parsed task template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses template text. Errors name the character position of the offending brace.
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        // (character position from 1, byte offset, char)
        let mut chars = s
            .char_indices()
            .enumerate()
            .map(|(n, (b, c))| (n + 1, b, c))
            .peekable();
        while let Some((at, byte, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|&(_, _, next)| next == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|&(_, _, next)| next == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::UnmatchedClose { at }),
                '{' => {
                    let start = byte + c.len_utf8();
                    let end = loop {
                        match chars.next() {
                            Some((_, end, '}')) => break end,
                            Some((_, _, '{')) | None => {
                                return Err(TemplateError::Unterminated { at });
                            }
                            Some(_) => {}
                        }
                    };
                    let reference = parse_ref(s.get(start..end).unwrap_or_default(), at)?;
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Ref(reference));
                }
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// Every reference, in order of appearance (repeats included).
    pub fn refs(&self) -> impl Iterator<Item = &TemplateRef> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Literal(_) => None,
        })
    }

    /// Fills in every reference from `ctx`. A missing session id renders as "" (a step may
    /// legitimately have none); a missing input or output is an error.
    pub fn render(&self, ctx: &impl TemplateContext) -> Result<String, TemplateError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Ref(TemplateRef::Input(name)) => out.push_str(
                    ctx.input(name)
                        .ok_or_else(|| TemplateError::MissingInput(name.clone()))?,
                ),
                Part::Ref(TemplateRef::StepOutput(step)) => out.push_str(
                    ctx.step_output(step)
                        .ok_or_else(|| TemplateError::MissingOutput(step.clone()))?,
                ),
                Part::Ref(TemplateRef::StepSessionId(step)) => {
                    out.push_str(ctx.step_session_id(step).unwrap_or_default());
                }
            }
        }
        Ok(out)
    }
}

/// Parses what sits between `{` and `}`.
fn parse_ref(text: &str, at: usize) -> Result<TemplateRef, TemplateError> {
    let bad = || TemplateError::BadReference {
        at,
        text: text.to_string(),
    };
    let (head, field) = text.split_once('.').ok_or_else(bad)?;
    if !is_identifier(head) || !is_identifier(field) {
        return Err(bad());
    }
    match (head, field) {
        ("inputs", name) => Ok(TemplateRef::Input(name.to_string())),
        (step, "output") => Ok(TemplateRef::StepOutput(step.to_string())),
        (step, "session_id") => Ok(TemplateRef::StepSessionId(step.to_string())),
        (step, field) => Err(TemplateError::UnknownField {
            at,
            step: step.to_string(),
            field: field.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Default)]
    struct Ctx {
        inputs: BTreeMap<&'static str, &'static str>,
        outputs: BTreeMap<&'static str, &'static str>,
        sessions: BTreeMap<&'static str, &'static str>,
    }

    impl TemplateContext for Ctx {
        fn input(&self, name: &str) -> Option<&str> {
            self.inputs.get(name).copied()
        }
        fn step_output(&self, step: &str) -> Option<&str> {
            self.outputs.get(step).copied()
        }
        fn step_session_id(&self, step: &str) -> Option<&str> {
            self.sessions.get(step).copied()
        }
    }

    fn ctx() -> Ctx {
        Ctx {
            inputs: [("feature", "login")].into(),
            outputs: [("design", "a plan")].into(),
            sessions: [("design", "sess-1")].into(),
        }
    }

    fn render(s: &str) -> Result<String, TemplateError> {
        Template::parse(s)?.render(&ctx())
    }

    #[test]
    fn references_are_replaced_by_their_values() {
        assert_eq!(
            render("Build {inputs.feature} from {design.output} in {design.session_id}").unwrap(),
            "Build login from a plan in sess-1"
        );
    }

    #[test]
    fn text_without_references_renders_as_is() {
        assert_eq!(render("").unwrap(), "");
        assert_eq!(render("plain ünïcode text").unwrap(), "plain ünïcode text");
    }

    #[test]
    fn doubled_braces_are_literal_braces() {
        assert_eq!(
            render("{{\"a\": 1}} and {{inputs.feature}}").unwrap(),
            "{\"a\": 1} and {inputs.feature}"
        );
        assert_eq!(render("{{{inputs.feature}}}").unwrap(), "{login}");
        assert_eq!(Template::parse("{{x}}").unwrap().refs().count(), 0);
    }

    #[test]
    fn refs_lists_every_reference_in_order() {
        let t = Template::parse("{a.output}{inputs.x} {b.session_id} {a.output}").unwrap();
        let refs: Vec<_> = t.refs().cloned().collect();
        assert_eq!(
            refs,
            [
                TemplateRef::StepOutput("a".into()),
                TemplateRef::Input("x".into()),
                TemplateRef::StepSessionId("b".into()),
                TemplateRef::StepOutput("a".into()),
            ]
        );
        assert_eq!(refs[2].to_string(), "{b.session_id}");
        assert_eq!(refs[1].step(), None);
    }

    #[test]
    fn an_unterminated_brace_is_an_error_with_its_position() {
        assert_eq!(
            Template::parse("ab {inputs.x"),
            Err(TemplateError::Unterminated { at: 4 })
        );
        assert_eq!(
            Template::parse("{a{b.output}"),
            Err(TemplateError::Unterminated { at: 1 })
        );
        assert_eq!(
            Template::parse("é{"),
            Err(TemplateError::Unterminated { at: 2 })
        );
    }

    #[test]
    fn a_lone_closing_brace_is_an_error() {
        assert_eq!(
            Template::parse("a } b"),
            Err(TemplateError::UnmatchedClose { at: 3 })
        );
        assert_eq!(
            Template::parse("{{x}"),
            Err(TemplateError::UnmatchedClose { at: 4 })
        );
    }

    #[test]
    fn braces_around_something_else_are_bad_references() {
        for text in [
            "{}",
            "{x}",
            "{ inputs.x }",
            "{a.b.c}",
            "{inputs.}",
            "{.output}",
            "{1a.output}",
        ] {
            assert!(
                matches!(
                    Template::parse(text),
                    Err(TemplateError::BadReference { at: 1, .. })
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn only_output_and_session_id_follow_a_step_id() {
        let err = Template::parse("x {design.result}").unwrap_err();
        assert_eq!(
            err,
            TemplateError::UnknownField {
                at: 3,
                step: "design".into(),
                field: "result".into()
            }
        );
        assert!(err.to_string().contains("only 'output' and 'session_id'"));
    }

    #[test]
    fn a_missing_input_or_output_fails_to_render() {
        assert_eq!(
            render("{inputs.nope}"),
            Err(TemplateError::MissingInput("nope".into()))
        );
        assert_eq!(
            render("{test.output}"),
            Err(TemplateError::MissingOutput("test".into()))
        );
    }

    #[test]
    fn a_missing_session_id_renders_empty() {
        assert_eq!(render("[{test.session_id}]").unwrap(), "[]");
    }

    #[test]
    fn error_messages_show_braces_literally() {
        let e = Template::parse("{x}").unwrap_err().to_string();
        assert!(
            e.starts_with("'{x}' at character 1 is not a reference"),
            "{e}"
        );
        assert!(e.contains("{inputs.NAME}"), "{e}");
        assert!(
            TemplateError::Unterminated { at: 1 }
                .to_string()
                .contains("'{{'")
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in "[a-z{}._ é]{0,40}|.{0,40}") {
            if let Ok(t) = Template::parse(&text) {
                let _ = t.render(&ctx());
            }
        }

        #[test]
        fn escaped_text_renders_back_to_itself(text in "[a-z{}._ é]{0,40}|.{0,40}") {
            let escaped = text.replace('{', "{{").replace('}', "}}");
            let t = Template::parse(&escaped).unwrap();
            proptest::prop_assert_eq!(t.refs().count(), 0);
            proptest::prop_assert_eq!(t.render(&ctx()).unwrap(), text);
        }
    }
}
