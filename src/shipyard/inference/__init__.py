"""The request pipeline between the HTTP layer and the engines: route, admit, generate, account,
tell the hooks. No HTTP here."""
