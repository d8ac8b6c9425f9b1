//! IBM Watson Assistant as the brain, end to end against a fake Watson and IAM.
