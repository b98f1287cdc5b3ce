"""HTTP only: parse, call the layers below, frame the answer. No model or key logic lives here."""
