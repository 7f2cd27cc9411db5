
#compdef cifar

_cifar_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _CIFAR_COMPLETE=complete_zsh cifar)
}

compdef _cifar_completion cifar

