//! Amazon Lex V2 as the brain, end to end against a fake Lex runtime.
