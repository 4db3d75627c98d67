output "hosts" {
  description = "The environment's hosts: name => {address, user, port, environment, fingerprint}; the inventory is written from this."
  value = {
    for name, host in terraform_data.host : name => {
      address     = host.output.address
      user        = host.output.user
      port        = host.output.port
      environment = host.output.environment
      fingerprint = host.output.fingerprint
    }
  }
}
