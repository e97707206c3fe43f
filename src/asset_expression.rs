//! Asset conditions: `orders & (customers | refunds)`. Parsing (with the offset of any mistake),
//! evaluation against the assets a DAG has queued events for, and the names an expression uses.
//! `&` binds tighter than `|`, as in Airflow's `AssetAll`/`AssetAny`.

use std::collections::BTreeSet;
use std::fmt;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetExpr {
    Asset(String),
    /// `AssetAll`: every operand must hold.
    All(Vec<AssetExpr>),
    /// `AssetAny`: one operand must hold.
    Any(Vec<AssetExpr>),
}

/// A malformed expression; `offset` is the byte (0-based) where it went wrong.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{message} at column {}", offset + 1)]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Name(String),
    And,
    Or,
    Open,
    Close,
}

fn is_name_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, '&' | '|' | '(' | ')' | '"')
}

fn tokenize(input: &str) -> Result<Vec<(usize, Token)>, ExprError> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '&' | '|' | '(' | ')' => {
                chars.next();
                let token = match c {
                    '&' => Token::And,
                    '|' => Token::Or,
                    '(' => Token::Open,
                    _ => Token::Close,
                };
                tokens.push((at, token));
            }
            '"' => {
                // Quoted names allow any character but `"`, for assets named like URIs with spaces.
                chars.next();
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, c)) => name.push(c),
                        None => {
                            return Err(ExprError {
                                offset: at,
                                message: "unterminated quoted asset name".into(),
                            })
                        }
                    }
                }
                tokens.push((at, Token::Name(name)));
            }
            _ => {
                let mut name = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if !is_name_char(c) {
                        break;
                    }
                    name.push(c);
                    chars.next();
                }
                tokens.push((at, Token::Name(name)));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.tokens
            .get(self.pos)
            .map(|(o, _)| *o)
            .unwrap_or(self.end)
    }

    fn error<T>(&self, message: &str) -> Result<T, ExprError> {
        Err(ExprError {
            offset: self.offset(),
            message: message.to_string(),
        })
    }

    fn any(&mut self) -> Result<AssetExpr, ExprError> {
        let mut operands = vec![self.all()?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            operands.push(self.all()?);
        }
        Ok(flatten(operands, AssetExpr::Any))
    }

    fn all(&mut self) -> Result<AssetExpr, ExprError> {
        let mut operands = vec![self.primary()?];
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            operands.push(self.primary()?);
        }
        Ok(flatten(operands, AssetExpr::All))
    }

    fn primary(&mut self) -> Result<AssetExpr, ExprError> {
        match self.peek().cloned() {
            Some(Token::Name(name)) if !name.is_empty() => {
                self.pos += 1;
                Ok(AssetExpr::Asset(name))
            }
            Some(Token::Open) => {
                self.pos += 1;
                let inner = self.any()?;
                if self.peek() != Some(&Token::Close) {
                    return self.error("expected `)`");
                }
                self.pos += 1;
                Ok(inner)
            }
            Some(Token::Close) => self.error("expected an asset name or `(`, found `)`"),
            Some(Token::And) | Some(Token::Or) => {
                self.error("expected an asset name or `(` before the operator")
            }
            _ => self.error("expected an asset name or `(`"),
        }
    }
}

fn flatten(mut operands: Vec<AssetExpr>, make: fn(Vec<AssetExpr>) -> AssetExpr) -> AssetExpr {
    if operands.len() == 1 {
        operands.remove(0)
    } else {
        make(operands)
    }
}

impl AssetExpr {
    pub fn parse(input: &str) -> Result<Self, ExprError> {
        let tokens = tokenize(input)?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            end: input.len(),
        };
        let expr = parser.any()?;
        if parser.pos < parser.tokens.len() {
            return parser.error("expected `&`, `|` or the end of the expression");
        }
        Ok(expr)
    }

    /// Whether the condition holds when exactly the assets in `queued` have queued events.
    pub fn evaluate(&self, queued: &BTreeSet<String>) -> bool {
        match self {
            AssetExpr::Asset(name) => queued.contains(name),
            AssetExpr::All(ops) => ops.iter().all(|o| o.evaluate(queued)),
            AssetExpr::Any(ops) => ops.iter().any(|o| o.evaluate(queued)),
        }
    }

    /// Every asset name the expression mentions.
    pub fn assets(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect(&mut out);
        out
    }

    fn collect(&self, out: &mut BTreeSet<String>) {
        match self {
            AssetExpr::Asset(name) => {
                out.insert(name.clone());
            }
            AssetExpr::All(ops) | AssetExpr::Any(ops) => ops.iter().for_each(|o| o.collect(out)),
        }
    }
}

/// Prints a canonical form that parses back to the same expression.
impl fmt::Display for AssetExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, ops: &[AssetExpr], sep: &str, paren_any: bool| {
            for (i, op) in ops.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                match op {
                    AssetExpr::Any(_) if paren_any => write!(f, "({op})")?,
                    _ => write!(f, "{op}")?,
                }
            }
            Ok(())
        };
        match self {
            AssetExpr::Asset(name) if name.chars().all(is_name_char) => f.write_str(name),
            AssetExpr::Asset(name) => write!(f, "\"{name}\""),
            AssetExpr::All(ops) => join(f, ops, " & ", true),
            AssetExpr::Any(ops) => join(f, ops, " | ", false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let e = AssetExpr::parse("a | b & c").unwrap();
        assert!(e.evaluate(&set(&["a"])));
        assert!(e.evaluate(&set(&["b", "c"])));
        assert!(!e.evaluate(&set(&["b"])));
    }

    #[test]
    fn a_and_b_or_c() {
        let e = AssetExpr::parse("a & (b | c)").unwrap();
        assert!(!e.evaluate(&set(&["a"])));
        assert!(!e.evaluate(&set(&["b", "c"])));
        assert!(e.evaluate(&set(&["a", "b"])));
        assert!(e.evaluate(&set(&["a", "c"])));
        assert_eq!(e.assets(), set(&["a", "b", "c"]));
        assert_eq!(e.to_string(), "a & (b | c)");
        assert_eq!(AssetExpr::parse(&e.to_string()).unwrap(), e);
    }

    #[test]
    fn quoted_names() {
        let e = AssetExpr::parse("\"s3://bucket/my file\" & x").unwrap();
        assert_eq!(e.assets(), set(&["s3://bucket/my file", "x"]));
        assert_eq!(AssetExpr::parse(&e.to_string()).unwrap(), e);
    }

    #[test]
    fn malformed_expressions_name_the_column() {
        for (input, column) in [
            ("a &", 4),
            ("(a | b", 7),
            ("a b", 3),
            ("& a", 1),
            ("a | )", 5),
            ("", 1),
            ("\"open", 1),
        ] {
            let err = AssetExpr::parse(input).unwrap_err();
            assert_eq!(err.offset + 1, column, "{input:?}: {err}");
        }
    }
}
