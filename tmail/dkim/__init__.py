"""DKIM (RFC 6376): per-domain keys on the SQL layer, and signing at queue time with dkimpy.

:mod:`.keys` stores the key pairs (so that every node signs with the same key) and gives the
DNS record to publish; :mod:`.trust` says which submitters' mail is signed; :mod:`.signing`
signs a message once, when it is queued, so that every retry and every node sends the same
bytes.
"""
