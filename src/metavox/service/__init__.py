"""The enrollment service: state (store) and the HTTP app (app)."""
