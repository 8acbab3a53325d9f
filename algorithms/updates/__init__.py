"""Update rules: how a batch becomes an optimizer step, written once and called by every schedule on every transport."""
