"""Policy review tooling for security reviewers and CI: baseline rules (``policy check``), the
reviewer report (``policy audit``/``explain``), the security-relevant diff of two policy sets
(``policy diff``) and the policy JSON Schema (``policy schema``).

One module per concept; everything is pure except ``source`` (reads directories and git) and
``roots`` (looks at the host filesystem).
"""
