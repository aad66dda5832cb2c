"""Control plane: policies -> directives, audit, SRE and finance APIs, the `flyball` CLI."""
