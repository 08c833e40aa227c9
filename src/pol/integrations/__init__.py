"""Framework integrations over `pol.attach`, each an optional extra that imports its framework only
when used: `pol.integrations.lightning` (`pip install 'pol[lightning]'`) and `pol.integrations.hf`
(`pip install 'pol[hf]'`)."""
