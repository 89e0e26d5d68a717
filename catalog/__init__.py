"""The ft catalog: settings, database models, sessions, repository functions and the artifact store."""
