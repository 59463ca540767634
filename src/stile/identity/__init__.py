"""Client identity: verification of bearer tokens presented to Stile (see ``stile.identity.jwt``)."""
