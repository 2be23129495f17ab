"""An OpenNebula-compatible cloud in a box: XML-RPC server, VM drivers, OneGate."""
