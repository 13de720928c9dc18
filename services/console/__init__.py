"""The web console for collectors and managers: server-rendered pages over the services' own
APIs (it has no database and reads no other service's): sign-in with a collector's key, the
worklist, the customer page with its actions, and the manager's dashboard."""
