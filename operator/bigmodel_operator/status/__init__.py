"""Pure status computation: observed children + checks -> the status block of our resources."""
