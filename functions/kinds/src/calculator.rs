//! The demo agent's `calculator`: evalexpr behind bounds on what reaches it.
//!
//! evalexpr builds and evaluates its operator tree recursively: every operator (a unary `-` as much as a
//! binary `+`) and every parenthesis adds a level, and a level costs about a kilobyte of stack in a debug
//! build. The model chooses the expression, so a 40 KB `1+1+…` or 5,000 leading `-` overflowed the
//! stack, and a stack overflow is an abort, not a panic: no `catch_unwind` stops it, and every job of
//! the process (on Lambda, of the whole batch) was lost. So the expression is measured first, and only
//! one within [`MAX_EXPRESSION_BYTES`] and [`MAX_OPERATORS`] (which bounds the tree's depth) reaches
//! the parser; the tests evaluate the deepest such expressions on a stack an eighth of a tokio worker's.
//! What evalexpr itself panics on (`shl(1, 100)` overflows in a debug build) is a panic, which the tool
//! wrapper answers as a tool error.

/// The longest expression evaluated (bytes).
pub const MAX_EXPRESSION_BYTES: usize = 1_000;

/// The most operators and opening parentheses an expression may have: the bound on the depth of
/// evalexpr's tree, and so on its recursion.
pub const MAX_OPERATORS: usize = 64;

/// What counts toward [`MAX_OPERATORS`]: every character evalexpr's operators are made of (a two-character
/// operator such as `==` counts twice, and characters inside a string literal count too: both only make
/// the bound stricter), and `(`, which opens a level of its own.
const OPERATOR_CHARS: &str = "+-*/%^=!<>&|,;(";

/// Evaluates an arithmetic expression to a finite number; every refusal is a sentence for the model.
pub fn evaluate(expression: &str) -> Result<f64, String> {
    check(expression)?;
    let value = evalexpr::eval_number(expression)
        .map_err(|e| format!("cannot evaluate {}: {e}", quote(expression)))?;
    if value.is_finite() {
        Ok(value)
    } else {
        // JSON has no infinity or NaN: it would reach the model as `null`.
        Err(format!(
            "{} is not a finite number ({value})",
            quote(expression)
        ))
    }
}

/// Refuses what could take evalexpr too deep, before it parses anything.
fn check(expression: &str) -> Result<(), String> {
    if expression.len() > MAX_EXPRESSION_BYTES {
        return Err(format!(
            "the expression has {} bytes; the calculator takes at most {MAX_EXPRESSION_BYTES}: \
             split the calculation into smaller ones",
            expression.len()
        ));
    }
    let operators = expression
        .chars()
        .filter(|c| OPERATOR_CHARS.contains(*c))
        .count();
    if operators > MAX_OPERATORS {
        return Err(format!(
            "the expression has {operators} operators and parentheses (signs included); the \
             calculator takes at most {MAX_OPERATORS}: split the calculation into smaller ones"
        ));
    }
    Ok(())
}

/// The expression as an error quotes it: at most its first 80 characters.
fn quote(expression: &str) -> String {
    const SHOWN: usize = 80;
    match expression.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}…", &expression[..cut]),
        None => format!("{expression:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deepest expressions the bounds let through, one per way of nesting.
    fn deepest() -> Vec<String> {
        let n = MAX_OPERATORS;
        vec![
            format!("1{}", "+1".repeat(n)),
            format!("2{}", "^1".repeat(n)),
            format!("{}1", "-".repeat(n)),
            format!("{}true", "!".repeat(n)),
            format!("{}1{}", "(".repeat(n), ")".repeat(n)),
            format!("{}1{}", "-(".repeat(n / 2), ")".repeat(n / 2)),
            format!("{}1", "a=".repeat(n)),
            format!("1{}", "*1+1".repeat(n / 2)),
        ]
    }

    /// A tokio worker thread has 2 MiB of stack; this runs on 256 KiB, in a debug build, so the bounds
    /// leave at least eight times the room the deepest expression needs.
    #[test]
    fn the_deepest_expressions_within_the_bounds_evaluate_on_a_small_stack() {
        let ran = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                for e in deepest() {
                    assert!(e.len() <= MAX_EXPRESSION_BYTES, "{e}");
                    check(&e).unwrap();
                    let _ = evaluate(&e); // a value or an error, never an overflow
                }
            })
            .unwrap()
            .join();
        assert!(ran.is_ok());
    }

    #[test]
    fn long_or_deep_expressions_are_refused_before_parsing() {
        let long = format!("1{}", "+1".repeat(20_000));
        let e = evaluate(&long).unwrap_err();
        assert!(
            e.contains("40001 bytes") && e.contains("at most 1000"),
            "{e}"
        );
        assert!(
            e.len() < 200,
            "the error does not quote the whole input: {e}"
        );
        let signs = format!("{}1", "-".repeat(MAX_OPERATORS + 1));
        let e = evaluate(&signs).unwrap_err();
        assert!(e.contains("65 operators"), "{e}");
        let parens = format!("{}1{}", "(".repeat(40), ")".repeat(40));
        assert!(evaluate(&parens).is_ok(), "40 levels are fine");
        let parens = format!("{}1{}", "(".repeat(70), ")".repeat(70));
        assert!(evaluate(&parens).unwrap_err().contains("70 operators"));
    }

    #[test]
    fn ordinary_arithmetic_works_and_non_finite_results_are_errors() {
        assert_eq!(evaluate("(2 + 3) * 4.5"), Ok(22.5));
        assert_eq!(evaluate("-(-3) * 3"), Ok(9.0));
        assert!(
            evaluate("2 +")
                .unwrap_err()
                .starts_with("cannot evaluate \"2 +\"")
        );
        assert!(
            evaluate("2 ^ 99999")
                .unwrap_err()
                .contains("not a finite number")
        );
        assert!(evaluate("1 / 0").is_err());
        let quoted = evaluate(&format!("{} +", "9".repeat(500))).unwrap_err();
        assert!(quoted.contains('…') && quoted.len() < 300, "{quoted}");
    }
}
