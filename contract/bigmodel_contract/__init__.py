"""The checks the operator and its workloads share: pure functions of the data contract, stdlib only.

The operator, the serving application and the trainer never import each other's runtime (docs/
development.md). Where all three must apply the *same* rule to the same string — a path that must stay
inside its mount, a URI with hidden characters, an address a workload must not fetch from — the rule
lives here once, so admission, the operator's own parse and the workloads cannot drift apart.
Nothing in this package may import anything outside the standard library (a unit test checks it).
"""
